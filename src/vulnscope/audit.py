"""The audit: everything vulnscope measures about one model, as one JSON-ready record."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
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
    accuracy,
    check_cascade,
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
        batch_size: samples per attack call.
        on_stage: called with a short description as each stage starts (for progress).

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
    started = time.perf_counter()
    positive = sorted({eps for eps in budgets if eps > 0})
    if on_stage is not None:
        on_stage(f"the attack cascade ({', '.join(attacks)}) at {len(positive)} budgets")
    clean = accuracy(model, data.x, data.y, batch_size=batch)
    by_eps: dict[float, dict[str, Any]] = {}
    stage_seconds: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    if positive:
        curve = standard_evaluation_curve(
            model, data.x, data.y, norm=norm, epsilons=positive, seed=seed, attacks=attacks,
            batch_size=batch,
        )  # fmt: skip
        for evaluation in curve.evaluations:
            by_eps[evaluation.eps] = evaluation.to_dict()
            stage_seconds[f"{evaluation.eps:g}"] = {
                stage.name: round(stage.seconds, 3) for stage in evaluation.stages
            }
            warnings += [w for w in evaluation.warnings if w not in warnings]
    elapsed = round(time.perf_counter() - started, 3)
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
