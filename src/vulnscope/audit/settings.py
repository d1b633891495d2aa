"""The audit's settings: defaults, the ``--quick`` preset, and the checks that build a plan.

:func:`make_plan` checks every argument of :func:`vulnscope.audit.audit` at the boundary
(each error names the argument, what was expected and what arrived) and returns the
:class:`~vulnscope.audit.stage.AuditPlan` the stages run on, with the stages chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
from vulnscope._checkpoint import tensor_digest
from vulnscope._random import make_generator
from vulnscope._validation import check_choice, check_int, check_logits, check_seed
from vulnscope.audit.budgets import DEFAULT_EPSILONS, check_budgets, choose_budgets
from vulnscope.audit.stage import AuditPlan, Stage, registered_stages
from vulnscope.data.dataset import ImageData
from vulnscope.errors import DataError, InvalidArgumentError, ModelError
from vulnscope.evaluate import DEFAULT_CASCADE, check_cascade

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPSILONS",
    "DEFAULT_EVALUATION",
    "EVALUATIONS",
    "GEOMETRY_SAMPLES",
    "QUICK",
    "QuickSettings",
    "check_device",
    "check_fits",
    "check_unit_range",
    "choose_stages",
    "default_stages",
    "geometry_sample",
    "make_plan",
]

EVALUATIONS = ("adaptive", "standard")
"""How the robustness stages attack: :func:`~vulnscope.evaluate.adaptive_chunk` (A³'s
schedule of the cascade, the default) or :func:`~vulnscope.evaluate.cascade_chunk`
(AutoAttack's, for figures comparable with published ones)."""

DEFAULT_EVALUATION = "adaptive"
"""The robustness stages' evaluation when none is asked for."""

DEFAULT_BATCH_SIZE = 512
"""Samples per attack call and per checkpointed chunk."""

GEOMETRY_SAMPLES = 64
"""Inputs of the stages that run on a sample of the data (spectra, amplification...)."""

CHECKPOINT_LAYOUT = 4
"""Version of the checkpoint's piece files (4: the chunk pieces carry certified points)."""


@dataclass(frozen=True)
class QuickSettings:
    """What ``quick=True`` changes: fewer samples, budgets and attacks, for a first look."""

    samples: int = 100
    attacks: tuple[str, ...] = ("apgd-ce", "apgd-dlr")
    geometry_samples: int = 16


QUICK = QuickSettings()
"""The settings of ``--quick`` (the minimal and RG stages lighten themselves too)."""


def default_stages(model: Callable[[Tensor], Tensor]) -> list[str]:
    """The registered stages that run by default and apply to ``model``, in order."""
    return [
        name
        for name, stage in registered_stages().items()
        if stage.default and stage.applies_to(model) is None
    ]


def choose_stages(
    stages: Sequence[str] | None, model: Callable[[Tensor], Tensor]
) -> list[Stage[Any, Any]]:
    """The stages to run: ``stages`` checked (in registry order), or the default ones."""
    registry = registered_stages()
    if stages is None:
        return [registry[name] for name in default_stages(model)]
    names = ", ".join(registry)
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        raise InvalidArgumentError(
            f"stages must be a non-empty list of names from {names}, got {stages!r}"
        )
    unknown = [name for name in stages if name not in registry]
    if unknown:
        raise InvalidArgumentError(f"stages: unknown stage {unknown[0]!r}; choose from {names}")
    if len(set(stages)) != len(stages):
        raise InvalidArgumentError(f"stages: a stage is listed twice in {list(stages)}")
    for name in stages:
        reason = registry[name].applies_to(model)
        if reason is not None:
            raise InvalidArgumentError(f"stages: {name!r} {reason}")
    return [stage for name, stage in registry.items() if name in stages]


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here (default the CPU)."""
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


def check_fits(model: Callable[[Tensor], Tensor], data: ImageData, device: torch.device) -> int:
    """The model's number of outputs, checked to take ``data``'s inputs and cover its classes."""
    x = data.x[:1].to(device)
    try:
        with torch.no_grad():
            logits = model(x)
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
    num_outputs = int(check_logits(logits, 1, name="the model").shape[1])
    if num_outputs < data.num_classes:
        raise ModelError(
            f"the model has {num_outputs} outputs but the data has {data.num_classes} classes"
        )
    return num_outputs


def check_unit_range(data: ImageData) -> None:
    """Refuse data whose values leave [0, 1]: the budgets are in the data's units."""
    low, high = float(data.x.min()), float(data.x.max())
    if low < 0 or high > 1:
        raise DataError(
            f"data: {data.source} holds values in [{low:.4g}, {high:.4g}], but the audit's "
            "budgets and attacks are for inputs in [0, 1]; scale the images to [0, 1] and put "
            "any normalisation in the model (--mean/--std)"
        )


def geometry_sample(samples: int, count: int, seed: int) -> Tensor:
    """The sorted indices of a seeded random sample of ``count`` of ``samples`` inputs."""
    chosen = torch.randperm(samples, generator=make_generator(seed))[: min(count, samples)]
    return chosen.sort().values


def make_plan(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    quick: bool,
    epsilons: Mapping[str, Sequence[float]] | None,
    attacks: Sequence[str] | None,
    seed: int,
    batch_size: int | None,
    geometry_samples: int | None,
    device: torch.device,
    directory: Path | None,
    extra: Mapping[str, Any] | None = None,
    measure_budgets: Collection[str] = ("linf", "l2"),
    evaluation: str = DEFAULT_EVALUATION,
    samples: int | None = None,
) -> AuditPlan:
    """The checked settings as a plan (``model`` already on ``device``; ``quick`` applied).

    ``samples`` keeps the first ``samples`` points (``quick``'s own cap otherwise);
    ``evaluation`` is ``"adaptive"`` or ``"standard"`` (:data:`EVALUATIONS`).

    The budgets not given are chosen by :func:`~vulnscope.audit.budgets.choose_budgets`
    (``measure_budgets``: the norms it may run DeepFool for, those of the stages that run).
    """
    if len(data) == 0:
        raise InvalidArgumentError(f"data: expected at least one sample, got none ({data.source})")
    cascade = (
        list(attacks) if attacks is not None else list(QUICK.attacks if quick else DEFAULT_CASCADE)
    )
    checked = [spec.name for spec in check_cascade(cascade, "linf")]
    check_cascade(cascade, "l2")
    geometry = check_int(
        geometry_samples
        if geometry_samples is not None
        else QUICK.geometry_samples
        if quick
        else GEOMETRY_SAMPLES,
        "geometry_samples",
    )
    seed = check_seed(seed) or 0
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    check_budgets(epsilons)  # before the model runs: a bad budget is the user's to fix first
    num_classes = check_fits(model, data, device)
    check_unit_range(data)
    # from the whole data, so that --quick runs the budgets of a full audit
    budgets = choose_budgets(
        model, data, epsilons, seed=seed, device=device, measure=measure_budgets
    )
    evaluation = check_choice(evaluation, "evaluation", EVALUATIONS)
    if samples is not None:
        data = data.take(check_int(samples, "samples"))
    elif quick and len(data) > QUICK.samples:
        data = data.take(QUICK.samples)
    return AuditPlan(
        model=model,
        data=data,
        device=device,
        seed=seed,
        quick=quick,
        epsilons=budgets.epsilons,
        attacks=cascade,
        attack_names=checked,
        batch_size=batch,
        sample=geometry_sample(len(data), geometry, seed),
        directory=directory,
        num_classes=num_classes,
        extra=dict(extra or {}),
        budgets=budgets,
        evaluation=evaluation,
    )


def checkpoint_settings(
    plan: AuditPlan, model_name: str, stages: Sequence[Stage[Any, Any]]
) -> dict[str, Any]:
    """Everything that makes the pieces what they are: a checkpoint's identity."""
    return {
        "model": model_name,
        "model_digest": tensor_digest(_model_tensors(plan.model)),
        "data": plan.data.source,
        "data_digest": tensor_digest([plan.data.x, plan.data.y]),
        "samples": len(plan.data),
        "stages": [stage.name for stage in stages],
        "quick": plan.quick,
        "epsilons": {k: list(v) for k, v in plan.epsilons.items()},
        "seed": plan.seed,
        "attacks": list(plan.attacks),
        "evaluation": plan.evaluation,
        "chunk_size": plan.batch_size,
        "geometry_samples": int(plan.sample.numel()),
        "extra": dict(plan.extra),
        "vulnscope_version": __version__,
        "layout": CHECKPOINT_LAYOUT,
    }


def _model_tensors(model: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """The parameters and buffers that make ``model`` the function it is (none if opaque)."""
    return list(model.state_dict().values()) if isinstance(model, nn.Module) else []
