"""The audit: everything vulnscope measures about one model, as one record and a report.

Stages, in order (:data:`STAGES`): the standard cascade's robust-accuracy curve under
L∞ and under L2, the distribution of minimal L2 perturbations, the input Fisher and
Hessian spectra, layer amplification, the dangerous (Fisher) perturbation beside an
adversarial example, and the RG analysis of a deep RBM network. Every chunk of every
stage is checkpointed atomically, so an interrupted audit resumes to the result an
uninterrupted one gives; under ``torchrun`` (or ``vulnscope audit --workers K``) the ranks
share those pieces and rank 0 writes the same record (:mod:`vulnscope.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
from vulnscope._checkpoint import Checkpoints
from vulnscope._io import write_json_atomic
from vulnscope._validation import (
    check_epsilons,
    check_int,
    check_logits,
    check_seed,
)
from vulnscope.audit.cascade import evaluate_cascade_chunk, merge_cascade_chunks
from vulnscope.audit.figures import plot_robust_accuracy
from vulnscope.audit.geometry_stages import (
    amplification_stage,
    dangerous_stage,
    geometry_sample,
    spectra_stage,
)
from vulnscope.audit.minimal_stage import MINIMAL_ATTACKS, minimal_chunk, minimal_section
from vulnscope.audit.progress import StageProgress
from vulnscope.audit.rg_stage import rg_stage
from vulnscope.audit.schema import SCHEMA_VERSION
from vulnscope.audit.verdict import verdict
from vulnscope.data.dataset import ImageData
from vulnscope.distributed import (
    PieceClaims,
    barrier,
    init_from_environment,
    local_device,
    rank_and_world,
    shared_token,
)
from vulnscope.errors import InvalidArgumentError, ModelError
from vulnscope.evaluate import DEFAULT_CASCADE, check_cascade
from vulnscope.rbm.network import DeepRBM

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPSILONS",
    "QUICK",
    "STAGES",
    "audit",
    "audit_pieces",
    "default_stages",
]

logger = logging.getLogger(__name__)

STAGES: dict[str, str] = {
    "linf": "robust accuracy under the standard cascade, L∞",
    "l2": "robust accuracy under the standard cascade, L2",
    "minimal": "minimal L2 perturbations (DeepFool, FAB)",
    "spectra": "input Fisher and Hessian spectra",
    "amplification": "layer amplification",
    "dangerous": "the dangerous (Fisher) perturbation and adversarial examples",
    "rg": "renormalisation-group analysis of the deep RBM",
}
"""The audit's stages, in the order they run, and what each measures."""

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.05, 0.1, 0.2),
    "l2": (0.25, 0.5, 1.0),
}
"""Budgets for inputs in [0, 1] when the user gives none: three per norm, from where most
of an undefended model's points survive to where few do (the cascade's cost grows with
the points still robust at each budget, so the small budgets are the expensive ones)."""

DEFAULT_BATCH_SIZE = 512
"""Samples per attack call and per checkpointed chunk."""


@dataclass(frozen=True)
class QuickSettings:
    """What ``quick=True`` changes: fewer samples, budgets and attacks, for a first look."""

    samples: int = 100
    attacks: tuple[str, ...] = ("apgd-ce", "apgd-dlr")
    minimal_attacks: tuple[str, ...] = ("deepfool",)
    geometry_samples: int = 16
    rg_inputs: int = 6
    rg_chains: int = 2_000


QUICK = QuickSettings()
"""The settings of ``--quick``."""

_GEOMETRY_SAMPLES = 64
_RG_INPUTS = 20
_RG_CHAINS = 10_000


def default_stages(model: Callable[[Tensor], Tensor]) -> list[str]:
    """The stages that apply to ``model``.

    All but ``rg`` unless it is a deep RBM, and ``amplification`` only for an
    ``nn.Module`` whose blocks can be found.
    """
    chosen = [name for name in STAGES if name not in ("amplification", "rg")]
    if _has_blocks(model):
        chosen.insert(chosen.index("dangerous"), "amplification")
    if isinstance(model, DeepRBM):
        chosen.append("rg")
    return chosen


def audit_pieces(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    stages: Sequence[str] | None = None,
    quick: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> int:
    """How many pieces a sharded :func:`audit` of ``model`` on ``data`` shares out.

    Each chunk of ``batch_size`` samples of the ``linf``, ``l2`` and ``minimal`` stages is
    a piece, and so is each other stage: more workers than pieces would only wait. It
    checks first what :func:`audit` checks before it starts (the stages, the device, and
    that the model takes the data's inputs, on the CPU, with an output per class), so that
    a launcher fails once, with the audit's message, before it starts any worker.

    Raises:
        InvalidArgumentError: bad ``stages``, ``batch_size`` or ``device``.
        ModelError: the model does not fit the data.

    """
    chosen = _check_stages(stages, model)
    size = None if batch_size is None else check_int(batch_size, "batch_size")
    _check_device(device)
    _check_fits(model, data, torch.device("cpu"))
    samples = min(len(data), QUICK.samples) if quick else len(data)
    chunks = 1 if size is None else max(math.ceil(samples / size), 1)
    return sum(chunks if stage in ("linf", "l2", "minimal") else 1 for stage in chosen)


def _has_blocks(model: Callable[[Tensor], Tensor]) -> bool:
    from vulnscope.diagnostics.layers import default_blocks

    if not isinstance(model, nn.Module):
        return False
    try:
        return len(default_blocks(model)) >= 2
    except (RuntimeError, ValueError, TypeError, AttributeError):
        return False


def _check_stages(stages: Sequence[str] | None, model: Callable[[Tensor], Tensor]) -> list[str]:
    if stages is None:
        return default_stages(model)
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        raise InvalidArgumentError(
            f"stages must be a non-empty list of names from {', '.join(STAGES)}, got {stages!r}"
        )
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise InvalidArgumentError(
            f"stages: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}"
        )
    if len(set(stages)) != len(stages):
        raise InvalidArgumentError(f"stages: a stage is listed twice in {list(stages)}")
    if "rg" in stages and not isinstance(model, DeepRBM):
        raise InvalidArgumentError(
            "stages: 'rg' needs a deep RBM network (e.g. --model digits-rbm); this model is "
            f"a {type(model).__name__}"
        )
    if "amplification" in stages and not _has_blocks(model):
        raise InvalidArgumentError(
            "stages: 'amplification' needs an nn.Module with at least two child blocks; "
            f"this model is a {type(model).__name__} without them"
        )
    return [name for name in STAGES if name in stages]


def _check_budgets(epsilons: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    given = dict(epsilons or {})
    unknown = [norm for norm in given if norm not in DEFAULT_EPSILONS]
    if unknown:
        raise InvalidArgumentError(
            f"epsilons: expected budgets for 'linf' and/or 'l2', got a key {unknown[0]!r}"
        )
    return {
        norm: check_epsilons(list(given.get(norm, DEFAULT_EPSILONS[norm])), f"epsilons[{norm!r}]")
        for norm in DEFAULT_EPSILONS
    }


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgumentError(
            f"device: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
            f"{device!r} ({error})"
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device: {device!r} is not available: no CUDA device here")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise InvalidArgumentError(
            f"device: {device!r} is not available: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(f"device: {device!r} is not available here")
    return chosen


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


def _check_fits(model: Callable[[Tensor], Tensor], data: ImageData, device: torch.device) -> int:
    """The model's number of outputs, checked to take ``data``'s inputs and cover its classes."""
    num_outputs = _num_outputs(model, data.x[:1].to(device))
    if num_outputs < data.num_classes:
        raise ModelError(
            f"the model has {num_outputs} outputs but the data has {data.num_classes} classes"
        )
    return num_outputs


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


def audit(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    model_name: str,
    stages: Sequence[str] | None = None,
    quick: bool = False,
    epsilons: Mapping[str, Sequence[float]] | None = None,
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    geometry_samples: int | None = None,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = False,
    model_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the audit's stages on ``model`` and ``data``; return the record (``results.json``).

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C), in eval mode.
        data: the samples to evaluate on (inputs in [0, 1]).
        model_name: how the record and the report name the model.
        stages: names from :data:`STAGES` (any order; they run in that order); default
            :func:`default_stages`.
        quick: a fast first look with the settings of :data:`QUICK` (the first 100
            samples, APGD-CE and APGD-DLR, DeepFool alone, 16 geometry inputs);
            explicit ``attacks`` still win.
        epsilons: budgets per norm, e.g. ``{"linf": [0.05, 0.1]}``; the norms left out
            keep :data:`DEFAULT_EPSILONS`.
        attacks: the cascade (names from :data:`vulnscope.evaluate.CASCADE_ATTACKS`);
            default AutoAttack's standard four.
        seed: seed of every attack's randomness and of the geometry sample.
        batch_size: samples per attack call, and per chunk: the robustness and minimal
            stages run in chunks of this size, chunk ``k`` with seed ``seed + k``.
        geometry_samples: inputs of the spectra, amplification and dangerous stages (a
            seeded random sample; default 64, 16 with ``quick``).
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); default CPU.
        out: a directory for ``results.json``, ``report.html``, the figures, and the
            checkpoint (``out/.checkpoint``, removed once the results are written);
            ``None``: nothing is written.
        resume: keep the chunks and stages a previous run with the same settings, weights
            and data left in ``out/.checkpoint``; the record then equals an uninterrupted
            run's (apart from ``created`` and ``timing``). Other settings are refused.
        progress: progress bars on stderr (``None``: only on a terminal; rank 0 only).
        model_metadata: what the model file says about itself (``vulnscope defend``).

    Returns:
        The JSON-ready record described by :func:`results_schema` (``schema_version``
        :data:`SCHEMA_VERSION`), on every rank of a sharded run.

    Sharded runs: under ``torchrun`` (or in a process group the caller initialised) the
    ranks share the pieces of the audit: each chunk of the robustness and minimal stages
    and each geometry stage is claimed by one rank, which computes and checkpoints it in
    ``out/.checkpoint`` (a directory every rank sees); rank 0 then reads them all back
    and writes the record. Chunks are fixed by sample index and seeded by their index
    (``seed + k``), never by rank, so the record is the same for any number of ranks,
    and a run resumed after a rank died computes only the missing pieces
    (:mod:`vulnscope.distributed`).

    """
    chosen_stages = _check_stages(stages, model)
    seed = check_seed(seed) or 0
    budgets = _check_budgets(epsilons)
    cascade = (
        list(attacks) if attacks is not None else list(QUICK.attacks if quick else DEFAULT_CASCADE)
    )
    cascades = {norm: check_cascade(cascade, norm) for norm in ("linf", "l2")}
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    geometry = check_int(
        geometry_samples if geometry_samples is not None
        else QUICK.geometry_samples if quick else _GEOMETRY_SAMPLES,
        "geometry_samples",
    )  # fmt: skip
    target = _check_device(device)
    init_from_environment(target)  # under torchrun: join its process group
    target = local_device(target)
    if isinstance(model, nn.Module):
        model = model.to(target)
    if quick and len(data) > QUICK.samples:
        data = data.take(QUICK.samples)
    num_outputs = _check_fits(model, data, target)
    size = batch or len(data)
    directory = Path(out) if out is not None else None
    rank, workers = rank_and_world()
    if workers > 1 and directory is None:
        raise InvalidArgumentError(
            f"out: a sharded audit ({workers} ranks) needs an output directory that every "
            "rank sees, for the pieces each computes; got None"
        )
    store = None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "model": model_name, "model_digest": _digest(_model_tensors(model)),
            "data": data.source, "data_digest": _digest([data.x, data.y]),
            "samples": len(data), "stages": chosen_stages, "quick": quick,
            "epsilons": budgets, "seed": seed, "attacks": cascade,
            "chunk_size": size, "geometry_samples": geometry,
            "vulnscope_version": __version__,
        }  # fmt: skip
        # Rank 0 starts (or checks) the checkpoint; the others join it.
        if rank == 0:
            store = Checkpoints(directory / ".checkpoint", settings, resume=resume)
        barrier()
        if rank != 0:
            store = Checkpoints(directory / ".checkpoint", settings, resume=True)
    run = _AuditRun(
        model=model, data=data, device=target, seed=seed, budgets=budgets, attacks=cascade,
        batch_size=batch, quick=quick, sample=geometry_sample(len(data), geometry, seed),
        store=store, progress=StageProgress(progress if rank == 0 else False),
        directory=directory,
    )  # fmt: skip
    if workers > 1:
        assert directory is not None
        if not _share_pieces(run, chosen_stages, directory / ".checkpoint" / "claims", rank):
            return json.loads((directory / "results.json").read_text("utf-8"))  # type: ignore[no-any-return]
    sections: dict[str, Any] = {}
    for stage in chosen_stages:
        if workers == 1:  # a sharded run logged its stages as it computed them
            logger.info("running %s", STAGES[stage])
        if stage in ("linf", "l2"):
            sections.setdefault("robustness", {})[stage] = run.robustness(stage)
        elif stage == "minimal":
            sections["minimal_perturbations"] = run.minimal()
        elif (section := run.geometry(stage)) is not None:
            sections[stage] = section
    clean_accuracy = run.clean_accuracy()
    parameters = (
        sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None
    )
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "vulnscope_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": model_name,
            "parameters": parameters,
            "num_classes": num_outputs,
            "kind": "deep RBM" if isinstance(model, DeepRBM) else "classifier",
            "metadata": model_metadata or None,
        },
        "data": {
            "source": data.source,
            "samples": len(data),
            "input_shape": list(data.x.shape[1:]),
            "class_names": list(data.class_names) if data.class_names is not None else None,
        },
        "settings": {
            "seed": seed,
            "stages": chosen_stages,
            "quick": quick,
            "device": str(target),
            "batch_size": size,
            "attacks": [stage.name for stage in cascades["linf"]],
            "epsilons": budgets,
            "geometry_samples": int(run.sample.numel()),
        },
        "clean_accuracy": clean_accuracy,
        **sections,
        "warnings": run.warnings,
    }
    record["verdict"] = verdict(record)
    record["figures"] = _figures(record, directory)
    record["timing"] = {
        "total": round(sum(run.timing.values()), 3),
        "stages": run.timing,
        "workers": workers,
    }
    if directory is not None:
        from vulnscope.report import write_report

        write_json_atomic(directory / "results.json", record)
        write_report(record, directory)
        Checkpoints.discard_directory(directory / ".checkpoint")
    if workers > 1:
        barrier()  # the other ranks read results.json once it is written
    return record


def _share_pieces(run: _AuditRun, stages: Sequence[str], claims_root: Path, rank: int) -> bool:
    """A sharded audit's first phase: every rank computes the pieces it claims.

    Returns True on rank 0, which then reads every piece and writes the record; the
    other ranks wait until it has (False: read ``results.json``).
    """
    if rank == 0:
        PieceClaims.discard_all(claims_root)  # claims of an earlier, interrupted launch
    barrier()
    claims = PieceClaims(claims_root / shared_token())
    run.claim = claims.claim
    for stage in stages:
        if rank == 0:
            logger.info("running %s", STAGES[stage])
        run.compute(stage)
    run.claim = None
    if rank == 0 and run.store is not None:
        unfinished = [name for name in run.elsewhere if name not in run.store]
        if unfinished:  # explain the wait: every bar here is full
            shown = ", ".join(unfinished[:4]) + (", ..." if len(unfinished) > 4 else "")
            logger.info("waiting for the other workers: %d piece%s left (%s)",
                        len(unfinished), "" if len(unfinished) == 1 else "s", shown)  # fmt: skip
    # The second phase reads every piece back, in stage order, and warns afresh.
    run.progress, run.timing, run.warnings = StageProgress(False), {}, []
    barrier()
    if rank != 0:
        barrier()
        return False
    return True


def _geometry(
    stage: str,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    seed: int,
    directory: Path | None,
    budgets: dict[str, list[float]],
    class_names: tuple[str, ...] | None,
    quick: bool,
) -> dict[str, Any]:
    """One of the stages that run on the geometry sample, as its record section."""
    if stage == "spectra":
        return spectra_stage(model, x, y, seed=seed, directory=directory)
    if stage == "amplification":
        assert isinstance(model, nn.Module)
        return amplification_stage(model, x, seed=seed, directory=directory)
    if stage == "dangerous":
        positive = sorted(eps for eps in budgets["linf"] if eps > 0) or [0.1]
        return dangerous_stage(model, x, y, eps=positive[len(positive) // 2], seed=seed,
                               directory=directory, class_names=class_names)  # fmt: skip
    assert isinstance(model, DeepRBM)
    inputs = QUICK.rg_inputs if quick else _RG_INPUTS
    return rg_stage(model, x[:inputs], y[:inputs], seed=seed, directory=directory,
                    samples=QUICK.rg_chains if quick else _RG_CHAINS)  # fmt: skip


_FIGURES = {
    "robust_accuracy": "robust_accuracy.png",
    "minimal_perturbations": "minimal_perturbations.png",
    "spectra": "spectra.png",
    "amplification": "amplification.png",
    "dangerous": "dangerous.png",
    "rg_layers": "rg_layers.png",
    "rg_directions": "rg_directions.png",
}


def _figures(record: dict[str, Any], directory: Path | None) -> dict[str, str]:
    """Draw the figures made from the whole record; name every figure on disk."""
    if directory is None:
        return {}
    if "robustness" in record:
        plot_robust_accuracy(record["robustness"], directory / _FIGURES["robust_accuracy"],
                             clean=record["clean_accuracy"])  # fmt: skip
    ran = set(record["settings"]["stages"])
    owner = {"robust_accuracy": {"linf", "l2"}, "minimal_perturbations": {"minimal"},
             "rg_layers": {"rg"}, "rg_directions": {"rg"}}  # fmt: skip
    return {
        key: name
        for key, name in _FIGURES.items()
        if owner.get(key, {key}) & ran and (directory / name).is_file()
    }


@dataclass
class _AuditRun:
    """One audit's model, data and settings: runs each stage, or reads it from the checkpoint.

    The robustness and minimal stages run chunk by chunk (chunk ``k`` with seed
    ``seed + k``); the others run once on the geometry sample. Each finished piece is
    saved before the next starts.
    """

    model: Callable[[Tensor], Tensor]
    data: ImageData
    device: torch.device
    seed: int
    budgets: dict[str, list[float]]
    attacks: list[str]
    batch_size: int | None
    quick: bool
    sample: Tensor
    store: Checkpoints | None
    progress: StageProgress
    directory: Path | None
    warnings: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    claim: Callable[[str], bool] | None = None
    """In a sharded run, whether this rank computes a piece not yet on disk; None: all."""
    elsewhere: list[str] = field(default_factory=list)
    """In a sharded run, the pieces another rank claimed (their bars count them done)."""
    _clean_accuracy: float | None = None

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, stop) of each chunk."""
        size, total = self.batch_size or len(self.data), len(self.data)
        return [(start, min(start + size, total)) for start in range(0, total, size)]

    def compute(self, stage: str) -> None:
        """Compute the pieces of ``stage`` that :attr:`claim` gives this rank."""
        if stage in ("linf", "l2"):
            self._cascade_pieces(stage)
        elif stage == "minimal":
            self._minimal_pieces()
        else:
            self.geometry(stage)

    def _positive_budgets(self, norm: str) -> list[float]:
        return sorted({eps for eps in self.budgets[norm] if eps > 0})

    def _cascade_pieces(self, norm: str) -> list[dict[str, Any] | None]:
        positive = self._positive_budgets(norm)

        def compute(x: Tensor, y: Tensor, index: int, tick: Callable[[], None]) -> dict[str, Any]:
            return evaluate_cascade_chunk(
                self.model, x, y, norm=norm, epsilons=positive, seed=self.seed + index,
                attacks=self.attacks, batch_size=self.batch_size, on_budget=lambda _: tick(),
            )  # fmt: skip

        return self._chunks(norm, compute, steps=max(1, len(positive)))

    def robustness(self, norm: str) -> dict[str, Any]:
        """The cascade's curve under ``norm``: the record's ``robustness[norm]``."""
        budgets = self.budgets[norm]
        positive = self._positive_budgets(norm)
        pieces = _complete(self._cascade_pieces(norm))
        merged = merge_cascade_chunks(pieces, norm=norm, epsilons=positive,
                                      samples=len(self.data))  # fmt: skip
        clean = self._clean_accuracy = merged["clean_accuracy"]
        by_eps = {evaluation["eps"]: evaluation for evaluation in merged["evaluations"]}
        self.warnings += [text for text in merged["warnings"] if text not in self.warnings]
        self.timing[norm] = merged["seconds"]
        return {
            "epsilons": budgets,
            "accuracy": [by_eps[eps]["robust_accuracy"] if eps > 0 else clean
                         for eps in budgets],
            "evaluations": [by_eps[eps] for eps in budgets if eps > 0],
            "attack_seconds": merged["stage_seconds"],
        }  # fmt: skip

    def _minimal_pieces(self) -> list[dict[str, Any] | None]:
        attacks = QUICK.minimal_attacks if self.quick else MINIMAL_ATTACKS

        def compute(x: Tensor, y: Tensor, index: int, tick: Callable[[], None]) -> dict[str, Any]:
            return minimal_chunk(self.model, x, y, attacks=attacks, seed=self.seed + index,
                                 batch_size=self.batch_size)  # fmt: skip

        return self._chunks("minimal", compute)

    def minimal(self) -> dict[str, Any]:
        """The minimal L2 perturbations: the record's ``minimal_perturbations``."""
        pieces = _complete(self._minimal_pieces())
        section = minimal_section(pieces, self.directory)
        section["input_l2_median"] = float(self.data.x.flatten(1).norm(dim=1).median())
        self.timing["minimal"] = round(sum(piece["seconds"] for piece in pieces), 3)
        return section

    def geometry(self, stage: str) -> dict[str, Any] | None:
        """A stage on the geometry sample (spectra, amplification, dangerous, rg).

        A model that cannot take the stage's derivatives (a custom autograd function
        without double backward or forward mode, say) loses that stage only: ``None``,
        and a warning in the record, rather than the whole audit.
        """
        x = self.data.x[self.sample].to(self.device)
        y = self.data.y[self.sample].to(self.device)
        with self.progress.stage(stage, 1) as bar:
            piece = self.store.load(stage) if self.store is not None else None
            if piece is None and self.claim is not None and not self.claim(stage):
                self.elsewhere.append(stage)
                bar.update(1)
                return None  # another rank computes it
            if piece is None:
                started = time.perf_counter()
                try:
                    section = _geometry(
                        stage, self.model, x, y, seed=self.seed, directory=self.directory,
                        budgets=self.budgets, class_names=self.data.class_names,
                        quick=self.quick,
                    )  # fmt: skip
                except (RuntimeError, NotImplementedError) as error:
                    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    message = f"the {stage} stage failed on this model and was skipped: {cause}"
                    logger.warning("%s", message)
                    self.warnings.append(message)
                    return None
                if stage == "dangerous":
                    for row in section["rows"]:
                        row["index"] = int(self.sample[row["index"]])
                piece = {"section": section, "seconds": round(time.perf_counter() - started, 3)}
                if self.store is not None:
                    self.store.save(stage, piece)
            bar.update(1)
        self.timing[stage] = piece["seconds"]
        section = piece["section"]
        return section  # type: ignore[no-any-return]

    def clean_accuracy(self) -> float:
        """Clean accuracy on the whole data (from the cascade's clean pass when it ran)."""
        if self._clean_accuracy is None:
            from vulnscope.evaluate import accuracy

            self._clean_accuracy = accuracy(
                self.model, self.data.x.to(self.device), self.data.y.to(self.device),
                batch_size=self.batch_size,
            )  # fmt: skip
        return self._clean_accuracy

    def _chunks(
        self,
        stage: str,
        compute: Callable[[Tensor, Tensor, int, Callable[[], None]], dict[str, Any]],
        *,
        steps: int = 1,
    ) -> list[dict[str, Any] | None]:
        """``compute(x, y, k, tick)`` on each chunk ``k``, or its checkpointed result.

        The stage's bar has ``steps`` steps per chunk; ``compute`` may call ``tick()`` as
        it finishes each (the rest are counted when the chunk ends). In a sharded run, a
        chunk another rank claimed is None.
        """
        pieces: list[dict[str, Any] | None] = []
        bounds = self.bounds
        with self.progress.stage(stage, steps * len(bounds)) as bar:
            for index, (start, stop) in enumerate(bounds):
                name = f"{stage}-{index:05d}"
                piece = self.store.load(name) if self.store is not None else None
                ticked = 0
                if piece is None and self.claim is not None and not self.claim(name):
                    self.elsewhere.append(name)
                    pieces.append(None)
                    bar.update(steps)
                    continue
                if piece is None:

                    def tick() -> None:
                        nonlocal ticked
                        if ticked < steps:
                            ticked += 1
                            bar.update(1)

                    started = time.perf_counter()
                    piece = compute(self.data.x[start:stop].to(self.device),
                                    self.data.y[start:stop].to(self.device), index,
                                    tick)  # fmt: skip
                    piece.setdefault("seconds", round(time.perf_counter() - started, 3))
                    if self.store is not None:
                        self.store.save(name, piece)
                pieces.append(piece)
                bar.update(steps - ticked)
        return pieces


def _complete(pieces: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The pieces of a stage, all computed (the second phase of a sharded run reads them)."""
    done = [piece for piece in pieces if piece is not None]
    if len(done) != len(pieces):
        raise RuntimeError("a piece of the audit is missing after every rank finished")
    return done
