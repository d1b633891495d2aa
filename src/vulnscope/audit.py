"""The audit: everything vulnscope measures about one model, as one JSON-ready record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
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
from vulnscope.attacks import APGD, PGD, Attack
from vulnscope.data.dataset import ImageData
from vulnscope.errors import ModelError
from vulnscope.evaluate import RobustAccuracyCurve, robust_accuracy

__all__ = ["DEFAULT_EPSILONS", "SCHEMA_VERSION", "audit", "audit_attacks"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the ``results.json`` layout; bumped whenever a field changes meaning."""

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.02, 0.05, 0.1, 0.15, 0.2),
    "l2": (0.25, 0.5, 0.75, 1.0, 1.5),
}
"""Budgets for inputs in [0, 1] when the user gives none."""


def audit_attacks(*, norm: str, seed: int, num_classes: int) -> dict[str, Attack]:
    """The attacks an audit runs, by display name.

    PGD with 40 steps and a random start (Madry et al. 2018), APGD-CE and, with at least
    3 classes, APGD-DLR (Croce and Hein 2020): two losses, so that a model whose
    cross-entropy gradients are uninformative is still caught.
    """
    attacks: dict[str, Attack] = {
        "PGD-40": PGD(norm=norm, steps=40, seed=seed),
        "APGD-CE": APGD(norm=norm, loss="ce", seed=seed),
    }
    if num_classes >= 3:
        attacks["APGD-DLR"] = APGD(norm=norm, loss="dlr", seed=seed)
    return attacks


def _num_outputs(model: Callable[[Tensor], Tensor], x: Tensor) -> int:
    """Run the model on one sample to learn its number of classes, with a clear error."""
    try:
        with torch.no_grad():
            logits = model(x[:1])
    except (RuntimeError, ValueError, TypeError) as error:
        message = str(error).strip().splitlines()[0] if str(error) else type(error).__name__
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
    seed: int = 0,
    batch_size: int | None = 512,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure clean accuracy and robust-accuracy curves; return the ``results.json`` record.

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C), in eval mode.
        data: the samples to evaluate on.
        model_name: how the report names the model.
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets; default :data:`DEFAULT_EPSILONS` for the norm.
        seed: seed of every attack's randomness.
        batch_size: samples per attack call.
        on_stage: called with a short description as each stage starts (for progress).

    Returns:
        A JSON-ready dict: ``schema_version``, ``vulnscope_version``, ``model``, ``data``,
        ``settings``, ``clean_accuracy``, ``robust_accuracy`` (one curve per attack),
        ``worst_case`` (a sample counts as broken if any attack broke it) and ``timing``.

    """
    norm = check_norm(norm, allowed=("linf", "l2"))
    seed = check_seed(seed) or 0
    budgets = check_epsilons(
        list(epsilons) if epsilons is not None else list(DEFAULT_EPSILONS[norm])
    )
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    num_outputs = _num_outputs(model, data.x)
    if num_outputs < data.num_classes:
        raise ModelError(
            f"the model has {num_outputs} outputs but the data has {data.num_classes} classes"
        )
    started = time.perf_counter()
    curves: dict[str, RobustAccuracyCurve] = {}
    timing: dict[str, float] = {}
    for name, attack in audit_attacks(norm=norm, seed=seed, num_classes=num_outputs).items():
        if on_stage is not None:
            on_stage(f"{name} at {len(budgets)} budgets")
        stage_start = time.perf_counter()
        curves[name] = robust_accuracy(
            model, data.x, data.y, attack=attack, epsilons=budgets, batch_size=batch
        )
        timing[name] = round(time.perf_counter() - stage_start, 3)
        logger.info("%s done in %.1f s", name, timing[name])
    worst = torch.stack([curve.success for curve in curves.values()]).any(dim=0)
    timing["total"] = round(time.perf_counter() - started, 3)
    parameters = (
        sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None
    )
    first = next(iter(curves.values()))
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
        "settings": {"norm": norm, "epsilons": budgets, "seed": seed},
        "clean_accuracy": first.clean_accuracy,
        "robust_accuracy": {name: curve.to_dict() for name, curve in curves.items()},
        "worst_case": {
            "epsilons": budgets,
            "robust_accuracy": [float(a) for a in 1.0 - worst.double().mean(dim=1)],
        },
        "timing": timing,
    }
