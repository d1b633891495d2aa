"""The check every counterexample passes before it is returned.

A counterexample must lie inside the threat set (the norm ball intersected with the input
box) and be misclassified by a plain forward pass of the model. A solver answers in
float64 (or exact rationals), and rounding that answer to the model's dtype can land it a
rounding step outside the ball, or move a margin within rounding of zero to the other
side; :func:`check_counterexamples` pulls each candidate back inside, exactly, and runs
the model on it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope.models.state import preserved_model_state

__all__ = ["check_counterexamples", "into_threat_set"]

_STEPS = 64
"""Rounding steps towards the center at most (one or two always suffice)."""


def into_threat_set(
    candidates: Tensor, center: Tensor, *, norm: str, eps: float, bounds: tuple[float, float]
) -> Tensor:
    """Candidates (B, *in) moved, in ``center``'s dtype, into the ball and the box.

    Clips (L∞) or shrinks (L2) the difference in float64, rounds to ``center``'s dtype,
    then steps every coordinate still outside one representable number towards the
    center until the difference, computed exactly in float64, is within ``eps``.

    Returns:
        (B, *in) in ``center``'s dtype.

    """
    x0 = center.double()
    delta = candidates.double() - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        size = _row_norms(delta)
        delta = delta * torch.where(size > eps, eps / size, 1.0)
    moved = (x0 + delta).clamp(*bounds).to(center.dtype)
    for _ in range(_STEPS):
        outside = _outside(moved, center, norm=norm, eps=eps, bounds=bounds)
        if not bool(outside.any()):
            break
        moved = torch.where(outside, torch.nextafter(moved, center), moved)
    return moved


def check_counterexamples(
    model: Callable[[Tensor], Tensor],
    center: Tensor,
    labels: Tensor,
    candidates: Tensor,
    *,
    norm: str,
    eps: float,
    bounds: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Move candidates into the threat set and check that the model misclassifies them.

    Args:
        model: the classifier, (B, *in) to logits (B, C); its state is left as found.
        center: the points (B, *in).
        labels: their classes (B,).
        candidates: one proposed counterexample per point (B, *in), any floating dtype.
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius.
        bounds: the input box.

    Returns:
        The moved candidates (B, *in) in ``center``'s dtype, and (B,) bool: inside the
        threat set and ``argmax(model(x)) != label``.

    """
    moved = into_threat_set(candidates, center, norm=norm, eps=eps, bounds=bounds)
    inside = ~_outside(moved, center, norm=norm, eps=eps, bounds=bounds).flatten(1).any(1)
    with preserved_model_state(model), torch.no_grad():
        wrong = model(moved).argmax(1) != labels
    return moved, inside & wrong


def _row_norms(delta: Tensor) -> Tensor:
    """Each row's L2 norm, shaped to broadcast against (B, *in)."""
    norms: Tensor = delta.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (delta.dim() - 1)))


def _outside(
    x: Tensor, center: Tensor, *, norm: str, eps: float, bounds: tuple[float, float]
) -> Tensor:
    """(B, *in) bool: the coordinates to move towards the center (all of a row's for L2)."""
    delta = x.double() - center.double()
    out_of_box = (x < bounds[0]) | (x > bounds[1])
    if norm == "linf":
        return out_of_box | (delta.abs() > eps)
    return out_of_box | ((_row_norms(delta) > eps) & (delta != 0))
