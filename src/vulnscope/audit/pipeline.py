"""The audit: every registered stage on one model, as one typed result, a record and a report.

:func:`audit` names no stage: it resolves the stages from the registry
(:mod:`vulnscope.audit.stage`), runs or resumes their pieces (:mod:`vulnscope.audit.runner`),
merges each stage's pieces in registry order, and writes ``results.json`` and the report.
Every piece is checkpointed atomically, so an interrupted audit resumes to the result an
uninterrupted one gives; under ``torchrun`` (or ``vulnscope audit --workers K``) the ranks
share the pieces and rank 0 writes the same record (:mod:`vulnscope.distributed`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
from vulnscope._checkpoint import Checkpoints
from vulnscope._io import write_json_atomic
from vulnscope.audit.progress import StageProgress
from vulnscope.audit.record import AuditResult, DataInfo, ModelInfo, Settings, Timing
from vulnscope.audit.report import write_report
from vulnscope.audit.runner import PieceRunner, StageOutcome
from vulnscope.audit.schema import SCHEMA_VERSION
from vulnscope.audit.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVALUATION,
    check_device,
    checkpoint_settings,
    choose_stages,
    make_plan,
)
from vulnscope.audit.stage import AuditPlan, Stage
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
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate import accuracy

__all__ = ["audit", "audit_pieces"]

logger = logging.getLogger(__name__)


def audit_pieces(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    stages: Sequence[str] | None = None,
    quick: bool = False,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    samples: int | None = None,
) -> int:
    """How many pieces a sharded :func:`audit` of ``model`` on ``data`` shares out.

    It checks first what :func:`audit` checks before it starts (the stages, the device,
    and that the model takes the data's inputs, on the CPU, with an output per class), so
    that a launcher fails once, with the audit's message, before it starts any worker.

    Raises:
        InvalidArgumentError: bad ``stages``, ``batch_size`` or ``device``.
        ModelError: the model does not fit the data.

    """
    chosen = choose_stages(stages, model)
    check_device(device)
    plan = make_plan(
        model,
        data,
        quick=quick,
        epsilons=None,
        attacks=None,
        seed=0,
        batch_size=batch_size,
        geometry_samples=None,
        device=torch.device("cpu"),
        directory=None,
        measure_budgets=(),  # the pieces are the same at any budgets
        samples=samples,
    )
    return sum(len(stage.pieces(plan)) for stage in chosen)


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
    resume: bool = True,
    progress: bool | None = False,
    model_metadata: dict[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    evaluation: str = DEFAULT_EVALUATION,
    samples: int | None = None,
) -> AuditResult:
    """Run the audit's stages on ``model`` and ``data``; return the typed result.

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C), in eval mode.
        data: the samples to evaluate on (inputs in [0, 1]).
        model_name: how the record and the report name the model.
        stages: names from :data:`~vulnscope.audit.STAGES` (any order; they run in the
            registry's order); default: every registered stage that applies to the model.
        quick: a fast first look with the settings of :data:`~vulnscope.audit.QUICK` (the
            first 100 samples, APGD-CE and APGD-DLR, 16 geometry inputs; DeepFool alone for
            the minimal perturbations); explicit ``attacks`` still win.
        epsilons: budgets per norm, e.g. ``{"linf": [0.05, 0.1]}``; the norms left out
            get three chosen from DeepFool's minimal perturbations of the model on the
            data, beside the conventional budgets of a data set that names itself
            (MNIST, Fashion-MNIST, CIFAR-10; the embedded digits keep theirs alone)
            (:func:`~vulnscope.audit.choose_budgets`); ``settings.budgets`` says how.
        attacks: the cascade (names from :data:`vulnscope.evaluate.CASCADE_ATTACKS`);
            default AutoAttack's standard four.
        seed: seed of every attack's randomness and of the geometry sample.
        batch_size: samples per attack call, and per chunk: the chunked stages run in
            chunks of this size, chunk ``k`` with seed ``seed + k``.
        geometry_samples: inputs of the stages that run on a seeded random sample
            (spectra, amplification, dangerous, rg; default 64, 16 with ``quick``).
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); default CPU.
        out: a directory for ``results.json``, ``report.html``, the figures, and the
            checkpoint (``out/.checkpoint``, removed once the results are written);
            ``None``: nothing is written.
        resume: keep the pieces a previous, interrupted run with the same settings,
            weights and data left in ``out/.checkpoint`` (the result then equals an
            uninterrupted run's, apart from ``created`` and ``timing``); a checkpoint made
            with other settings is refused, naming each that differs. False discards any
            checkpoint and starts over (the CLI's ``--fresh``).
        progress: progress bars on stderr (``None``: only on a terminal; rank 0 only).
        model_metadata: what the model file says about itself (``vulnscope defend``).
        options: settings of registered stages from outside vulnscope (JSON-ready; part of
            the checkpoint's identity), read from :attr:`AuditPlan.extra`.
        evaluation: how the robustness stages attack: ``"adaptive"`` (default,
            :func:`~vulnscope.evaluate.adaptive_evaluation`'s schedule of the cascade:
            the same robust accuracy at a fraction of the time) or ``"standard"``
            (AutoAttack's, for figures comparable with published ones).
        samples: evaluate the first ``samples`` points (with ``quick`` too, whose own
            cap is 100).

    Returns:
        :class:`~vulnscope.audit.AuditResult` (``.to_dict()`` is ``results.json``, described
        by :func:`~vulnscope.audit.results_schema`), on every rank of a sharded run.

    Sharded runs: under ``torchrun`` (or in a process group the caller initialised) each
    piece (a chunk of a chunked stage, or a whole stage) is claimed by one rank, which
    computes and checkpoints it in ``out/.checkpoint`` (a directory every rank sees); rank
    0 then reads them all back and writes the record. Pieces are fixed by sample index and
    seeded by their index, never by rank, so the record is the same for any number of
    ranks, and a run resumed after a rank died computes only the missing pieces.

    """
    chosen = choose_stages(stages, model)
    target = check_device(device)
    init_from_environment(target)  # under torchrun: join its process group
    target = local_device(target)
    if isinstance(model, nn.Module):
        model = model.to(target)
    directory = Path(out) if out is not None else None
    plan = make_plan(
        model,
        data,
        quick=quick,
        epsilons=epsilons,
        attacks=attacks,
        seed=seed,
        batch_size=batch_size,
        geometry_samples=geometry_samples,
        device=target,
        directory=directory,
        extra=options,
        measure_budgets={norm for stage in chosen for norm in stage.budget_norms},
        evaluation=evaluation,
        samples=samples,
    )
    rank, workers = rank_and_world()
    store = _checkpoint(plan, model_name, chosen, resume, rank, workers)
    runner = PieceRunner(plan, store, StageProgress(progress if rank == 0 else False))
    if workers > 1:
        assert directory is not None  # _checkpoint refused a sharded run without one
        if not _share_pieces(runner, chosen, directory / ".checkpoint" / "claims", rank):
            record = json.loads((directory / "results.json").read_text("utf-8"))
            return AuditResult.from_dict(record)
    outcomes: dict[str, StageOutcome] = {}
    for stage in chosen:
        if workers == 1:  # a sharded run logged its stages as it computed them
            logger.info("running %s", stage.description)
        outcomes[stage.name] = runner.run(stage)
    result = _merge(plan, chosen, outcomes, model_name, model_metadata, workers)
    if directory is not None:
        write_json_atomic(directory / "results.json", result.to_dict())
        write_report(result, directory)
        Checkpoints.discard_directory(directory / ".checkpoint")
    if workers > 1:
        barrier()  # the other ranks read results.json once it is written
    return result


def _merge(
    plan: AuditPlan,
    stages: Sequence[Stage[Any, Any]],
    outcomes: Mapping[str, StageOutcome],
    model_name: str,
    model_metadata: dict[str, Any] | None,
    workers: int,
) -> AuditResult:
    """Every stage's pieces merged in registry order, then the verdict and the figures."""
    results: dict[str, Any] = {}
    warnings: list[str] = []
    for stage in stages:
        outcome = outcomes[stage.name]
        if outcome.failure is not None:
            warnings += [outcome.failure] if outcome.failure not in warnings else []
            continue
        if not outcome.complete:
            raise RuntimeError("a piece of the audit is missing after every rank finished")
        results[stage.name] = stage.merge(outcome.pieces, plan, results)
        warnings += [text for text in stage.warnings(results[stage.name]) if text not in warnings]
    clean = accuracy(
        plan.model,
        plan.data.x.to(plan.device),
        plan.data.y.to(plan.device),
        batch_size=plan.batch_size,
    )
    figures: dict[str, str] = {}
    if plan.directory is not None:
        for stage in stages:
            if stage.name in results:
                figures.update(stage.figures(results[stage.name], plan, results, clean))
    model = plan.model
    return AuditResult(
        schema_version=SCHEMA_VERSION,
        vulnscope_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=ModelInfo(
            name=model_name,
            parameters=sum(p.numel() for p in model.parameters())
            if isinstance(model, nn.Module)
            else None,
            num_classes=plan.num_classes,
            kind=_kind(model),
            metadata=model_metadata or None,
        ),
        data=DataInfo(
            source=plan.data.source,
            samples=len(plan.data),
            input_shape=list(plan.data.x.shape[1:]),
            class_names=list(plan.data.class_names) if plan.data.class_names is not None else None,
        ),
        settings=Settings(
            seed=plan.seed,
            stages=[stage.name for stage in stages],
            quick=plan.quick,
            device=str(plan.device),
            batch_size=plan.batch_size or len(plan.data),
            attacks=list(plan.attack_names),
            evaluation=plan.evaluation,
            epsilons={norm: list(values) for norm, values in plan.epsilons.items()},
            geometry_samples=int(plan.sample.numel()),
            budgets=plan.budgets,
        ),
        clean_accuracy=clean,
        results=results,
        warnings=warnings,
        verdict=verdict(clean, results),
        figures=figures,
        timing=Timing(
            total=round(sum(outcome.seconds for outcome in outcomes.values()), 3),
            stages={name: outcome.seconds for name, outcome in outcomes.items()},
            workers=workers,
        ),
    )


def _kind(model: Callable[[Tensor], Tensor]) -> str:
    from vulnscope.rbm.network import DeepRBM

    return "deep RBM" if isinstance(model, DeepRBM) else "classifier"


def _checkpoint(
    plan: AuditPlan,
    model_name: str,
    stages: Sequence[Stage[Any, Any]],
    resume: bool,
    rank: int,
    workers: int,
) -> Checkpoints | None:
    """The checkpoint in ``out/.checkpoint``: rank 0 starts (or checks) it, the others join."""
    if workers > 1 and plan.directory is None:
        raise InvalidArgumentError(
            f"out: a sharded audit ({workers} ranks) needs an output directory that every "
            "rank sees, for the pieces each computes; got None"
        )
    if plan.directory is None:
        return None
    plan.directory.mkdir(parents=True, exist_ok=True)
    settings = checkpoint_settings(plan, model_name, stages)
    store = None
    if rank == 0:
        store = Checkpoints(plan.directory / ".checkpoint", settings, resume=resume)
    barrier()
    if rank != 0:
        store = Checkpoints(plan.directory / ".checkpoint", settings, resume=True)
    return store


def _share_pieces(
    runner: PieceRunner, stages: Sequence[Stage[Any, Any]], claims_root: Path, rank: int
) -> bool:
    """A sharded audit's first phase: every rank computes the pieces it claims.

    Returns True on rank 0, which then reads every piece and writes the record; the
    other ranks wait until it has (False: read ``results.json``).
    """
    if rank == 0:
        PieceClaims.discard_all(claims_root)  # claims of an earlier, interrupted launch
    barrier()
    runner.claim = PieceClaims(claims_root / shared_token()).claim
    for stage in stages:
        if rank == 0:
            logger.info("running %s", stage.description)
        runner.run(stage)
    runner.claim = None
    if rank == 0:
        runner.say_what_is_left()
    # The second phase reads every piece back, in stage order, and warns afresh.
    runner.progress = StageProgress(False)
    barrier()
    if rank != 0:
        barrier()
        return False
    return True
