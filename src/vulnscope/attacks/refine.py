"""What the minimal attacks do with an adversarial point once they have one.

Two forward-only touches: shrink the point towards ``x`` along the segment between them
(:func:`bisect_to_boundary`), and honour a cap ``eps`` (:func:`fit_in_cap`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.norms import lp_norm, per_sample, project

__all__ = ["bisect_to_boundary", "fit_in_cap"]


def bisect_to_boundary(
    model: CountingModel,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    steps: int,
    bounds: tuple[float, float],
) -> Tensor:
    """Shrink each adversarial ``x_adv`` towards ``x`` by bisection on the segment.

    Keeps, per sample, the smallest scale ``t`` in ``(0, 1]`` found for which
    ``x + t (x_adv - x)`` is still adversarial (the segment may cross the boundary more
    than once; bisection finds one crossing, never a point that is not adversarial).
    ``steps`` forward passes, no gradients. ``x_adv`` must be adversarial.
    """
    direction = x_adv - x
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    best = x_adv.clone()
    with torch.no_grad():
        for _ in range(steps):
            middle = (low + high) / 2
            point = (x + per_sample(middle, x) * direction).clamp(*bounds)
            hit = is_adversarial(model(point), y, target)
            best[hit] = point[hit]
            high = torch.where(hit, middle, high)
            low = torch.where(hit, low, middle)
    return best


def fit_in_cap(
    model: CountingModel,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
) -> Tensor:
    """Adversarial points larger than ``eps``: their projection if still adversarial, else ``x``.

    A minimal attack returns ``x`` where it found nothing inside its cap; one forward pass
    on the rows outside the ball. ``x_adv`` (n, ...) must be adversarial.
    """
    outside = (lp_norm(x_adv - x, norm) > eps).nonzero()[:, 0]
    if outside.numel() == 0:
        return x_adv
    inside = project(x[outside], x_adv[outside], norm=norm, eps=eps, bounds=bounds)
    with torch.no_grad():
        hit = is_adversarial(model(inside), y[outside], None if target is None else target[outside])
    result = x_adv.clone()
    result[outside] = torch.where(per_sample(hit, inside), inside, x[outside])
    return result
