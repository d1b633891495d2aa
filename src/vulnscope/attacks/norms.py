"""Geometry of Lp balls: norms, projections, steepest-ascent directions, uniform sampling.

All functions work on batches: the first dimension indexes samples and every other
dimension is flattened into one feature vector per sample. ``norm`` is one of ``"linf"``,
``"l2"`` and ``"l1"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "lp_norm",
    "per_sample",
    "project",
    "project_ball",
    "random_in_ball",
    "steepest_ascent",
]

_TINY = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (N,) values so that they broadcast against ``like`` of shape (N, ...)."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


Radius = float | Tensor
"""A ball radius: one number for the whole batch, or a (N,) tensor, one per sample."""


def _radius(eps: Radius, like: Tensor) -> float | Tensor:
    """``eps`` broadcastable against ``like`` (N, ...)."""
    return per_sample(eps, like) if isinstance(eps, Tensor) else eps


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm of a batch of perturbations.

    Args:
        delta: perturbations, shape (N, ...).
        norm: ``"linf"``, ``"l2"``, ``"l1"``, or ``"l0"`` (the number of nonzero
            entries, the size sparse attacks such as JSMA minimise).

    Returns:
        Shape (N,), same dtype as ``delta``.

    """
    flat = _flat(delta)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    if norm == "l0":
        return (flat != 0).sum(dim=1).to(flat.dtype)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.pow(2).sum(dim=1).sqrt()
    return flat.abs().sum(dim=1)


def _project_l1_box(z: Tensor, low: Tensor, high: Tensor, eps: Radius) -> Tensor:
    """Euclidean projection of each row of ``z`` onto ``{d : |d|_1 <= eps, low <= d <= high}``.

    ``low <= 0 <= high`` elementwise, all of shape (N, D); ``eps`` a number or (N,).
    The projection has the form
    ``d_i = sign(z_i) clip(|z_i| - lam, 0, cap_i)`` with ``cap_i`` the box side that ``z_i``
    points to, and ``lam >= 0`` the root of the piecewise-linear, decreasing function
    ``f(lam) = sum_i clip(|z_i| - lam, 0, cap_i) = eps``. Sorting its 2D breakpoints gives
    ``f`` at every breakpoint by a cumulative sum, hence the exact root in O(D log D)
    (the box-constrained form of Duchi et al. 2008, "Efficient projections onto the
    l1-ball for learning in high dimensions").
    """
    magnitude = z.abs()
    cap = torch.where(z >= 0, high, -low)
    clipped = torch.minimum(magnitude, cap)
    radius = (eps if isinstance(eps, Tensor) else torch.full_like(z[:, 0], eps))[:, None]
    inside = clipped.sum(dim=1, keepdim=True) <= radius
    if bool(inside.all()):
        return torch.sign(z) * clipped
    # The root search runs in float64: the cumulative sums would otherwise drift.
    a, c = magnitude.double(), cap.double()
    points = torch.cat([a - c, a], dim=1)
    slope_changes = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)
    points, order = points.sort(dim=1)
    slope = slope_changes.gather(1, order).cumsum(dim=1)
    gaps = points[:, 1:] - points[:, :-1]
    start = c.sum(dim=1, keepdim=True)
    values = torch.cat([start, start + (slope[:, :-1] * gaps).cumsum(dim=1)], dim=1)
    # f decreases, so the number of breakpoints above eps is the index just after the root.
    target = radius.double()
    after = (values > target).sum(dim=1, keepdim=True).clamp(1, points.shape[1] - 1)
    before = after - 1
    lam = points.gather(1, before) + (values.gather(1, before) - target) / (
        -slope.gather(1, before)
    ).clamp_min(1.0)
    lam = lam.clamp_min(0.0).to(z.dtype)
    projected = torch.sign(z) * torch.minimum((magnitude - lam).clamp_min(0.0), cap)
    projected = torch.where(inside, torch.sign(z) * clipped, projected)
    # Guard against the last ulp of rounding: shrinking towards 0 stays inside the box.
    size = projected.abs().sum(dim=1, keepdim=True)
    scale = torch.where(size > radius, radius / size.clamp_min(_TINY), torch.ones_like(size))
    return projected * scale


def project_ball(delta: Tensor, norm: str, eps: Radius) -> Tensor:
    """Euclidean projection of each perturbation onto the Lp ball of radius ``eps``.

    Args:
        delta: perturbations, shape (N, ...).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius >= 0: a number, or (N,) for one radius per sample.

    Returns:
        Projected perturbations, shape (N, ...).

    """
    if norm == "linf":
        if isinstance(eps, Tensor):
            radius = per_sample(eps, delta)
            return torch.minimum(torch.maximum(delta, -radius), radius)
        return delta.clamp(-eps, eps)
    if norm == "l2":
        size = lp_norm(delta, "l2")
        scale = torch.where(size > eps, eps / size.clamp_min(_TINY), torch.ones_like(size))
        return delta * per_sample(scale, delta)
    flat = _flat(delta)
    unbounded = flat.abs()
    return _project_l1_box(flat, -unbounded, unbounded, eps).reshape(delta.shape)


def project(
    x: Tensor, x_adv: Tensor, *, norm: str, eps: Radius, bounds: tuple[float, float]
) -> Tensor:
    """Map ``x_adv`` to a point of the eps-ball around ``x`` that is inside ``bounds``.

    Exact Euclidean projection onto ball ∩ box for ``"linf"`` and ``"l1"``; for ``"l2"``
    the ball projection followed by clipping, which stays feasible (clipping only moves
    each coordinate towards ``x``) and is what every attack library does.

    Args:
        x: centres, shape (N, ...), inside ``bounds``.
        x_adv: points to project, shape (N, ...).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius >= 0: a number, or (N,) for one radius per sample.
        bounds: ``(low, high)`` input bounds.

    Returns:
        Shape (N, ...).

    """
    low, high = bounds
    if norm == "linf":
        radius = _radius(eps, x)
        return torch.minimum(torch.maximum(x_adv, x - radius), x + radius).clamp(low, high)
    if norm == "l2":
        return (x + project_ball(x_adv - x, "l2", eps)).clamp(low, high)
    flat_x = _flat(x)
    delta = _project_l1_box(_flat(x_adv) - flat_x, low - flat_x, high - flat_x, eps)
    return (flat_x + delta).reshape(x.shape).clamp(low, high)


def steepest_ascent(grad: Tensor, norm: str, *, l1_sparsity: float = 0.05) -> Tensor:
    """Unit-norm direction of steepest ascent of a linear function with gradient ``grad``.

    ``"linf"``: ``sign(grad)``; ``"l2"``: ``grad / |grad|_2``; ``"l1"``: the sign of the
    largest ``ceil(l1_sparsity * D)`` gradient entries, spread evenly so that the L1 norm
    is one (the sparse L1 step of Tramèr and Boneh 2019, "Adversarial training and
    robustness for multiple perturbations"; a single coordinate is the exact steepest
    L1 direction, a few make PGD converge faster). A zero gradient gives a zero direction.

    Args:
        grad: gradients, shape (N, ...).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        l1_sparsity: fraction of coordinates moved by an L1 step, in (0, 1].

    Returns:
        Shape (N, ...).

    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        size = lp_norm(grad, "l2").clamp_min(_TINY)
        return grad / per_sample(size, grad)
    flat = _flat(grad)
    k = max(1, math.ceil(l1_sparsity * flat.shape[1]))
    threshold = flat.abs().topk(k, dim=1).values[:, -1:]
    chosen = (flat.abs() >= threshold) & (flat != 0)
    count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
    return (flat.sign() * chosen / count).reshape(grad.shape)


def random_in_ball(
    like: Tensor, norm: str, eps: Radius, *, generator: torch.Generator | None
) -> Tensor:
    """Perturbations drawn uniformly from the Lp ball of radius ``eps``.

    L2: a Gaussian direction with radius ``eps * U^(1/D)``. L1: ``D + 1`` exponential
    variables normalised by their sum give a point uniform on the simplex; dropping the
    last coordinate and attaching random signs gives a point uniform in the L1 ball.

    Args:
        like: a tensor of shape (N, ...) whose shape, dtype and device the draw takes.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        eps: radius >= 0: a number, or (N,) for one radius per sample.
        generator: the source of randomness (on ``like``'s device).

    Returns:
        Shape (N, ...).

    """
    n, dim = like.shape[0], _flat(like).shape[1]
    dtype, device = like.dtype, like.device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    scale = _radius(eps, torch.empty(n, 1))
    if norm == "linf":
        return ((uniform(n, dim) * 2.0 - 1.0) * scale).reshape(like.shape)
    if norm == "l2":
        direction = torch.randn((n, dim), generator=generator, dtype=dtype, device=device)
        direction = direction / lp_norm(direction, "l2").clamp_min(_TINY)[:, None]
        radius = uniform(n, 1) ** (1.0 / max(dim, 1))
        return (direction * radius * scale).reshape(like.shape)
    exponential = -torch.log1p(-uniform(n, dim + 1))  # in [0, inf), never log(0)
    simplex = exponential[:, :dim] / exponential.sum(dim=1, keepdim=True)
    signs = uniform(n, dim).lt(0.5).to(dtype) * 2.0 - 1.0
    return (simplex * signs * scale).reshape(like.shape)
