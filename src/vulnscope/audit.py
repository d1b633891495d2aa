"""The audit: everything vulnscope measures about one model, as one JSON-ready record."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
from vulnscope._checkpoint import Checkpoints
from vulnscope._validation import (
    check_epsilons,
    check_int,
    check_logits,
    check_norm,
    check_seed,
)
from vulnscope.data.dataset import ImageData
from vulnscope.errors import ModelError
from vulnscope.evaluate import (
    DEFAULT_CASCADE,
    check_cascade,
    predict,
    standard_evaluation_curve,
)

__all__ = ["DEFAULT_EPSILONS", "SCHEMA_VERSION", "audit", "results_schema"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""Version of the ``results.json`` layout; bumped whenever a field changes meaning.

2: robust accuracy under the standard cascade (one curve, which attack broke each point,
the gradient-masking warnings) instead of one curve per attack.
"""


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``, shipped in the package.

    Validate a record with any JSON Schema validator, e.g.
    ``jsonschema.validate(record, results_schema())``.
    """
    text = resources.files("vulnscope").joinpath("schemas/results.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.02, 0.05, 0.1, 0.15, 0.2),
    "l2": (0.25, 0.5, 0.75, 1.0, 1.5),
}
"""Budgets for inputs in [0, 1] when the user gives none."""


def _num_outputs(model: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Run the model on one sample to learn its number of classes, with a clear error."""
    try:
        with torch.no_grad():
            logits = model(x[:1])
    except (RuntimeError, ValueError, TypeError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        # a TorchScript error opens with a banner; its cause is on the last line
        message = (
            (lines[-1] if "TorchScript" in lines[0] else lines[0])
            if lines
            else type(error).__name__
        )
        raise ModelError(
            f"the model cannot process inputs of shape {tuple(x.shape[1:])}: {message}"
        ) from None
    return int(check_logits(logits, 1, name="the model").shape[1])


def audit(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    model_name: str,
    norm: str = "linf",
    epsilons: Sequence[float] | None = None,
    attacks: Sequence[str] = DEFAULT_CASCADE,
    seed: int = 0,
    batch_size: int | None = 512,
    on_stage: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Clean accuracy and the robust-accuracy curve under the standard cascade, as a record.

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C), in eval mode.
        data: the samples to evaluate on.
        model_name: how the report names the model.
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets; default :data:`DEFAULT_EPSILONS` for the norm.
        attacks: the cascade (names from :data:`vulnscope.evaluate.CASCADE_ATTACKS`);
            default AutoAttack's standard four.
        seed: seed of every attack's randomness.
        batch_size: samples per attack call, and per chunk: the data is evaluated in
            chunks of this size, chunk ``k`` with seed ``seed + k`` (the default 512 takes
            the 397 digits in one chunk).
        on_stage: called with a short description as each stage starts (for progress).
        checkpoint: a directory where each finished chunk is written atomically, so that
            an interrupted audit can resume (``None``: no checkpoint).
        resume: keep the chunks a previous run with the same settings left in
            ``checkpoint``; the result equals an uninterrupted run's (apart from
            ``created`` and ``timing``). A checkpoint made with other settings, other
            weights (a digest of the state dict) or other data is refused.

    Returns:
        A JSON-ready dict: ``schema_version``, ``vulnscope_version``, ``model``, ``data``,
        ``settings``, ``clean_accuracy``, ``robust_accuracy`` (the cascade's curve),
        ``evaluations`` (per budget: which attack broke how many points, each attack's
        cost, the masking checks), ``warnings`` and ``timing``.

    """
    norm = check_norm(norm, allowed=("linf", "l2"))
    seed = check_seed(seed) or 0
    budgets = check_epsilons(
        list(epsilons) if epsilons is not None else list(DEFAULT_EPSILONS[norm])
    )
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    cascade = check_cascade(attacks, norm)
    num_outputs = _num_outputs(model, data.x)
    if num_outputs < data.num_classes:
        raise ModelError(
            f"the model has {num_outputs} outputs but the data has {data.num_classes} classes"
        )
    positive = sorted({eps for eps in budgets if eps > 0})
    size = len(data) if batch is None else batch
    bounds = [(start, min(start + size, len(data))) for start in range(0, len(data), size)]
    store = None
    if checkpoint is not None:
        store = Checkpoints(checkpoint, {
            "model": model_name, "model_digest": _digest(_model_tensors(model)),
            "data": data.source, "data_digest": _digest([data.x, data.y]),
            "samples": len(data), "norm": norm, "epsilons": budgets, "seed": seed,
            "attacks": list(attacks), "chunk_size": size, "vulnscope_version": __version__,
        }, resume=resume)  # fmt: skip
    if on_stage is not None:
        on_stage(
            f"the attack cascade ({', '.join(attacks)}) at {len(positive)} budgets, "
            f"{len(bounds)} chunk(s) of up to {size} samples"
        )
    chunks = []
    for index, (start, stop) in enumerate(bounds):
        name = f"chunk-{index:05d}"
        piece = store.load(name) if store is not None else None
        if piece is None:
            piece = _evaluate_chunk(
                model, data.x[start:stop], data.y[start:stop], norm=norm, epsilons=positive,
                seed=seed + index, attacks=attacks, batch_size=batch,
            )  # fmt: skip
            if store is not None:
                store.save(name, piece)
        elif on_stage is not None:
            on_stage(f"chunk {index + 1} of {len(bounds)} read from the checkpoint")
        chunks.append(piece)
    merged = _merge(chunks, norm=norm, epsilons=positive, samples=len(data))
    clean = merged["clean_accuracy"]
    by_eps = {evaluation["eps"]: evaluation for evaluation in merged["evaluations"]}
    warnings = merged["warnings"]
    stage_seconds = merged["stage_seconds"]
    elapsed = merged["seconds"]
    logger.info("cascade done in %.1f s", elapsed)
    parameters = (
        sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "vulnscope_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"name": model_name, "parameters": parameters, "num_classes": num_outputs},
        "data": {
            "source": data.source,
            "samples": len(data),
            "input_shape": list(data.x.shape[1:]),
        },
        "settings": {
            "norm": norm,
            "epsilons": budgets,
            "seed": seed,
            "attacks": [stage.name for stage in cascade],
        },
        "clean_accuracy": clean,
        "robust_accuracy": {
            "epsilons": budgets,
            "accuracy": [by_eps[eps]["robust_accuracy"] if eps > 0 else clean for eps in budgets],
        },
        "evaluations": [by_eps[eps] for eps in budgets if eps > 0],
        "warnings": warnings,
        "timing": {"total": elapsed, "stages": stage_seconds},
    }


def _model_tensors(model: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """The parameters and buffers that make ``model`` the function it is (none if opaque)."""
    return list(model.state_dict().values()) if isinstance(model, nn.Module) else []


def _digest(tensors: Sequence[Tensor]) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes: a checkpoint's model or data identity."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _evaluate_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilons: list[float],
    seed: int,
    attacks: Sequence[str],
    batch_size: int | None,
) -> dict[str, Any]:
    """The cascade on one chunk, as counts that add up across chunks (JSON-ready)."""
    started = time.perf_counter()
    evaluations = []
    if not epsilons:
        correct = int((predict(model, x, batch_size=batch_size) == y).sum())
    else:
        curve = standard_evaluation_curve(
            model, x, y, norm=norm, epsilons=epsilons, seed=seed, attacks=attacks,
            batch_size=batch_size,
        )  # fmt: skip
        for evaluation in curve.evaluations:
            summary = evaluation.to_dict()
            evaluations.append({
                "eps": evaluation.eps,
                "robust": int(evaluation.robust.sum()),
                "clean": x.shape[0] - summary["broken_by"].get("clean", 0),
                "broken_by": summary["broken_by"],
                "stages": summary["stages"],
                "checks": summary["checks"],
                "warnings": summary["warnings"],
                "seconds": {stage.name: round(stage.seconds, 3) for stage in evaluation.stages},
            })  # fmt: skip
        correct = evaluations[0]["clean"]  # the cascade classified the clean points already
    seconds = round(time.perf_counter() - started, 3)
    return {"samples": x.shape[0], "correct": correct, "evaluations": evaluations,
            "seconds": seconds}  # fmt: skip


def _merge(
    chunks: list[dict[str, Any]], *, norm: str, epsilons: list[float], samples: int
) -> dict[str, Any]:
    """Add the chunks' counts up into the record's figures."""
    evaluations = []
    warnings: list[str] = []
    stage_seconds: dict[str, dict[str, float]] = {}
    for position, eps in enumerate(epsilons):
        parts = [chunk["evaluations"][position] for chunk in chunks]
        broken: dict[str, int] = {}
        checks: dict[str, bool] = {}
        stages: list[dict[str, Any]] = []
        seconds: dict[str, float] = {}
        messages: list[str] = []
        for part in parts:
            for name, count in part["broken_by"].items():
                broken[name] = broken.get(name, 0) + count
            for name, fired in part["checks"].items():
                checks[name] = checks.get(name, False) or fired
            for index, stage in enumerate(part["stages"]):
                if index == len(stages):
                    stages.append(dict(stage))
                else:
                    for key in ("attacked", "broken", "forward_evals", "gradient_evals"):
                        stages[index][key] += stage[key]
            for name, value in part["seconds"].items():
                seconds[name] = round(seconds.get(name, 0.0) + value, 3)
            messages += [message for message in part["warnings"] if message not in messages]
        evaluations.append({
            "norm": norm,
            "eps": eps,
            "robust_accuracy": sum(part["robust"] for part in parts) / samples,
            "clean_accuracy": sum(part["clean"] for part in parts) / samples,
            "broken_by": broken,
            "stages": stages,
            "checks": checks,
            "warnings": messages,
        })  # fmt: skip
        stage_seconds[f"{eps:g}"] = seconds
        warnings += [message for message in messages if message not in warnings]
    return {
        "clean_accuracy": sum(chunk["correct"] for chunk in chunks) / samples,
        "evaluations": evaluations,
        "warnings": warnings,
        "stage_seconds": stage_seconds,
        "seconds": round(sum(chunk["seconds"] for chunk in chunks), 3),
    }
