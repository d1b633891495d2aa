"""How far an input must move along a direction before a classifier changes its class."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._validation import check_int, check_real
from vulnscope.errors import InvalidArgumentError

__all__ = ["class_change_distances", "line_search_class_change", "model_classifier"]

Classifier = Callable[[Tensor], Tensor]
"""Maps flat points (P, n) to classes (P,)."""


def model_classifier(
    model: Callable[[Tensor], Tensor], shape: tuple[int, ...]
) -> Callable[[Tensor], Tensor]:
    """The arg-max class of ``model`` on flat points (P, n), reshaped to (P, *shape)."""

    @torch.no_grad()
    def classify(points: Tensor) -> Tensor:
        return model(points.reshape(points.shape[0], *shape)).argmax(1)

    return classify


def line_search_class_change(
    classify: Classifier,
    x: Tensor,
    directions: Tensor,
    *,
    max_step: float,
    steps: int = 24,
    refine: int = 8,
    bounds: tuple[float, float] | None = None,
    batch_points: int = 512,
) -> Tensor:
    """Smallest multiple ``t`` of each direction at which the class of ``x + t d`` changes.

    A grid of ``steps`` values of ``t`` up to ``max_step`` brackets the first change, then
    ``refine`` bisections narrow it (resolution ``max_step / steps / 2**refine``). ``t`` is in
    units of each direction as given: pass unit vectors for distances in a norm.

    Args:
        classify: (P, n) flat points -> (P,) classes.
        x: (B, n) flat starting points.
        directions: (B, D, n) directions.
        max_step: largest ``t`` searched; directions that never change the class get ``inf``.
        steps: grid points.
        refine: bisection steps.
        bounds: if given, every point is clipped to ``[low, high]`` before it is classified.
        batch_points: points classified per call.

    Returns:
        (B, D) float64 steps ``t``, ``inf`` where no change was found.

    """
    if x.ndim != 2:
        raise InvalidArgumentError(f"x must be flat with shape (B, n), got {tuple(x.shape)}")
    if (
        directions.ndim != 3
        or directions.shape[0] != x.shape[0]
        or directions.shape[2] != x.shape[1]
    ):
        raise InvalidArgumentError(
            f"directions must have shape ({x.shape[0]}, D, {x.shape[1]}), "
            f"got {tuple(directions.shape)}"
        )
    max_step = check_real(max_step, "max_step", minimum=0.0, exclusive=True)
    steps, refine = check_int(steps, "steps"), check_int(refine, "refine", minimum=0)
    x, directions = x.detach(), directions.detach().to(x.dtype)

    def classes_at(t: Tensor) -> Tensor:
        """Classes at ``x + t d`` for ``t`` of shape (B, D) or (B, D, S)."""
        extra = t.ndim - 2
        d = directions.reshape(*directions.shape[:2], *([1] * extra), -1)
        origin = x.reshape(x.shape[0], 1, *([1] * extra), -1)
        points = origin + t[..., None].to(x.dtype) * d
        if bounds is not None:
            points = points.clamp(*bounds)
        flat = points.reshape(-1, x.shape[1])
        out = torch.cat([classify(chunk) for chunk in flat.split(batch_points)])
        return out.reshape(t.shape)

    start = classify(x)  # (B,)
    grid = torch.linspace(0, max_step, steps + 1, dtype=torch.float64, device=x.device)[1:]
    changed = classes_at(grid.expand(*directions.shape[:2], -1)) != start[:, None, None]
    found = changed.any(-1)
    first = changed.to(torch.int64).argmax(-1)
    high = grid[first]
    low = torch.where(first > 0, grid[(first - 1).clamp_min(0)], torch.zeros_like(high))
    for _ in range(refine):
        middle = (low + high) / 2
        flips = classes_at(middle) != start[:, None]
        high = torch.where(flips, middle, high)
        low = torch.where(flips, low, middle)
    return torch.where(found, high, torch.full_like(high, float("inf")))


def class_change_distances(
    classify: Classifier,
    x: Tensor,
    directions: Tensor,
    *,
    max_distance: float,
    both_signs: bool = True,
    steps: int = 24,
    refine: int = 8,
    batch_points: int = 512,
) -> Tensor:
    """Smallest L2 distance along each direction at which the class changes.

    :func:`line_search_class_change` on the directions scaled to unit L2 norm, so every
    direction is compared at equal norm; with ``both_signs`` the nearer of ``±d`` counts
    (eigenvectors have no sign). Points are not clipped.

    Args:
        classify: (P, n) flat points -> (P,) classes.
        x: (B, n) flat starting points.
        directions: (B, D, n) directions (any non-zero length).
        max_distance: largest distance searched; ``inf`` where no change lies within it.
        both_signs: also search along ``-d`` and keep the smaller distance.
        steps: grid points.
        refine: bisection steps.
        batch_points: points classified per call.

    Returns:
        (B, D) float64 distances.

    """
    unit = directions.detach().to(x.dtype)
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    if both_signs:
        unit = torch.cat([unit, -unit], 1)
    distance = line_search_class_change(
        classify,
        x,
        unit,
        max_step=max_distance,
        steps=steps,
        refine=refine,
        batch_points=batch_points,
    )
    if both_signs:
        half = distance.shape[1] // 2
        distance = torch.minimum(distance[:, :half], distance[:, half:])
    return distance
