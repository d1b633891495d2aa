"""Projected gradient ascent: the engine under FGSM, BIM and PGD.

Kept lean on purpose: per step one forward and one backward pass with respect to the
input (the parameters do not require gradients inside an attack), then a handful of
in-place elementwise operations, so the attack costs next to nothing beyond the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope.attacks.losses import Loss, is_adversarial
from vulnscope.attacks.norms import project, random_in_ball, steepest_ascent

__all__ = ["gradient_ascent", "random_start", "value_and_grad"]


def value_and_grad(
    model: Callable[[Tensor], Tensor],
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    loss: Loss,
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (N, C), per-sample loss (N,) and its input gradient (N, ...) at ``x_adv``."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    values = loss(logits, y, target)
    (grad,) = torch.autograd.grad(values.sum(), x_adv)
    return logits.detach(), values.detach(), grad


def random_start(
    x: Tensor, *, norm: str, eps: float, bounds: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """A point drawn uniformly from the eps-ball around each input, clipped to the bounds."""
    noise = random_in_ball(x, norm, eps, generator=generator)
    return project(x, x + noise, norm=norm, eps=eps, bounds=bounds)


def _box_blocked(x_adv: Tensor, grad: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Coordinates that sit on a bound with the gradient pushing outwards (cannot move)."""
    return ((x_adv <= bounds[0]) & (grad < 0)) | ((x_adv >= bounds[1]) & (grad > 0))


def gradient_ascent(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    x_start: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    loss: Loss,
    norm: str,
    eps: float,
    steps: int,
    step_size: float,
    bounds: tuple[float, float],
    early_stop: bool,
    l1_sparsity: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """Maximise ``loss`` inside the eps-ball around ``x`` by projected steepest ascent.

    Each step moves ``step_size`` along the steepest-ascent direction of the norm
    (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks")
    and projects back onto ball ∩ box.

    Args:
        model: maps (N, ...) to logits (N, C).
        x: centres of the balls, shape (N, ...).
        x_start: starting points inside the balls, shape (N, ...).
        y: true labels (N,).
        target: target labels (N,) or ``None``.
        loss: per-sample objective to maximise (see :mod:`vulnscope.attacks.losses`).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius of the balls.
        steps: number of gradient steps.
        step_size: length of each step in the norm.
        bounds: ``(low, high)`` input bounds.
        early_stop: stop working on a sample as soon as an iterate is adversarial and
            keep that iterate; otherwise return the last iterate (classic PGD).
        l1_sparsity: fraction of coordinates an L1 step moves.

    Returns:
        ``(x_adv, stopped)``: the points reached, shape (N, ...), and (N,) bool marking
        the samples stopped early on an adversarial iterate.

    """
    x_adv = x_start.detach().clone()
    stopped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if norm == "linf":
        # Ball ∩ box is itself a box here: one clamp per step projects exactly.
        low = (x - eps).clamp_(min=bounds[0])
        high = (x + eps).clamp_(max=bounds[1])
    result = x_adv.clone() if early_stop else None
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        logits, _, grad = value_and_grad(model, x_adv, y, target, loss)
        if result is not None:
            hit = is_adversarial(logits, y, target)
            if bool(hit.any()):
                result[active[hit]] = x_adv[hit]
                stopped[active[hit]] = True
                keep = ~hit
                active, x_adv, grad, x, y = active[keep], x_adv[keep], grad[keep], x[keep], y[keep]
                target = None if target is None else target[keep]
                if norm == "linf":
                    low, high = low[keep], high[keep]
                if active.numel() == 0:
                    break
        if norm == "linf":
            x_adv.add_(grad.sign_(), alpha=step_size)
            x_adv = torch.minimum(torch.maximum(x_adv, low, out=x_adv), high, out=x_adv)
            continue
        if norm == "l1":
            grad.masked_fill_(_box_blocked(x_adv, grad, bounds), 0.0)
        x_adv.add_(steepest_ascent(grad, norm, l1_sparsity=l1_sparsity), alpha=step_size)
        x_adv = project(x, x_adv, norm=norm, eps=eps, bounds=bounds)
    if result is None:
        return x_adv, stopped
    result[active] = x_adv
    return result, stopped
