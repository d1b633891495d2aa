r"""Moving probability vectors inside the simplex by a given L1 distance, class kept.

Every direction-based output poisoning in :mod:`vulnscope.cloning` publishes
``q = Π(p + t d)``: the true output ``p`` moved along a sum-zero direction ``d`` and
projected back onto the probability simplex, with ``t >= 0`` chosen so that
``||q - p||_1`` equals the defender's budget. :func:`perturb_along` finds that step for a
batch of rows at once, and guarantees what every such defence promises: the arg-max
class of each published vector is the one the model predicted (Kenway 2018b: "small
enough that the arg-max class never changes"). Where the budget cannot be spent without
changing the class, it publishes the largest step that keeps it and reports the L1
distance it reached.

Two probability vectors with the same arg-max class ``c`` both put at least ``1/C`` on
``c``, so they are at most ``2(1 - 1/C)`` apart in L1 (:func:`max_l1_budget`); a budget
that large can never be spent with the class kept, and :func:`check_budget` refuses it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vulnscope._simplex import project_to_simplex, project_unchecked
from vulnscope._validation import (
    check_bool,
    check_finite,
    check_int,
    check_real,
    check_tensor,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "argmax_gap",
    "check_budget",
    "check_probabilities",
    "max_l1_budget",
    "perturb_along",
    "project_to_simplex",
    "search_along",
    "sum_zero_basis",
    "sum_zero_projection",
]

_SUM_TOLERANCE = 1e-6
"""How far from one a row of probabilities may sum (float32 softmax outputs included)."""

_MAX_STEP = 1e6
"""Largest step searched along a unit-L1 direction: far past the point where every path
of interest has settled on a face of the simplex, small enough that ``p + t d`` keeps
``p`` to about 1e-10."""

_ITERATIONS = 200
"""Upper bound on doubling and bisection steps (each loop stops once float64 is exhausted)."""


def sum_zero_basis(num_classes: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """An orthonormal basis of the sum-zero directions: (C, C - 1), Helmert's columns.

    Column ``k`` (``k = 1 .. C-1``) is ``(1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1))``
    with ``k`` ones.
    """
    basis = torch.zeros(num_classes, num_classes - 1, dtype=dtype)
    for k in range(1, num_classes):
        basis[:k, k - 1] = 1.0
        basis[k, k - 1] = -float(k)
        basis[:, k - 1] /= (k * (k + 1)) ** 0.5
    return basis


def sum_zero_projection(directions: Tensor) -> Tensor:
    """Remove each row's mean: the component that moves along the simplex, (..., C).

    ``P d`` with ``P = I - 11ᵀ/C``: the closest direction that keeps ``Σ_j y_j = 1``.
    """
    return directions - directions.mean(-1, keepdim=True)


def max_l1_budget(num_classes: int) -> float:
    """``2 (1 - 1/C)``: the L1 distance no two vectors with the same arg-max class reach.

    Both put at least ``1/C`` on that class, so they share at least ``1/C`` of their mass
    and differ by at most ``2(1 - 1/C)``, equality only at the uniform vector, whose
    arg-max is a tie.

    Example:
        >>> round(max_l1_budget(10), 12)
        1.8

    """
    classes = check_int(num_classes, "num_classes", minimum=2)
    return 2.0 * (1.0 - 1.0 / classes)


def check_budget(budget: Any, num_classes: int, name: str = "budget") -> float:
    """A poisoning budget for C classes: a real number in ``(0, 2(1 - 1/C))``.

    Raises:
        InvalidTypeError: ``budget`` is not a real number.
        InvalidArgumentError: it is not finite, not positive, or too large to keep the
            arg-max class (see :func:`max_l1_budget`).

    """
    value = check_real(budget, name, minimum=0.0, exclusive=True)
    bound = max_l1_budget(num_classes)
    if value >= bound:
        raise InvalidArgumentError(
            f"{name} must be < {bound:.6g} for {num_classes} classes: two probability vectors "
            f"with the same arg-max are closer than 2(1 - 1/C) in L1, got {value:.6g}"
        )
    return value


def check_probabilities(probs: Any, name: str = "probs") -> Tensor:
    """Probability vectors: a floating (B, C) tensor, C >= 2, rows >= 0 summing to one.

    Returns the rows as float64. A row may sum to one within 1e-6 (a float32 softmax).
    """
    probs = check_tensor(probs, name)
    if not probs.is_floating_point():
        raise InvalidTypeError(f"{name} must have a floating dtype, got {probs.dtype}")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise InvalidArgumentError(
            f"{name} must have shape (B, C) with C >= 2 classes, got shape {tuple(probs.shape)}"
        )
    rows = check_finite(probs.detach().to(torch.float64), name)
    if rows.numel() and float(rows.min()) < 0.0:
        raise InvalidArgumentError(
            f"{name} must be non-negative probabilities, got minimum {float(rows.min()):.6g}"
        )
    error = (rows.sum(-1) - 1.0).abs()
    if error.numel() and float(error.max()) > _SUM_TOLERANCE:
        worst = int(error.argmax())
        raise InvalidArgumentError(
            f"{name} must have rows summing to one, got row {worst} summing to "
            f"{float(rows[worst].sum()):.6g}"
        )
    return rows


def argmax_gap(probs: Tensor, classes: Tensor) -> Tensor:
    """``q_c - max_{j≠c} q_j`` for each row of ``probs`` (B, C) and class ``classes`` (B,)."""
    own = probs.gather(-1, classes[:, None])[:, 0]
    others = probs.scatter(-1, classes[:, None], -torch.inf).amax(-1)
    return own - others


def perturb_along(
    probs: Tensor,
    directions: Tensor,
    budget: float,
    *,
    margin: float = 1e-3,
    both_signs: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Move each probability vector along a direction by an L1 budget, its class kept.

    For each row the path ``t ↦ q(t) = Π(p + t d)`` (``d`` made sum-zero; Π the projection
    onto the simplex, :func:`project_to_simplex`) is searched for ``t* >= 0`` with
    ``||q(t*) - p||_1 = budget``: doubling brackets it, bisection finds it, all rows at
    once in float64. ``q(t*)`` is accepted if it keeps the arg-max class ``c`` of ``p``
    (``torch.argmax``, first index on exact ties) with a gap ``q_c - max_{j≠c} q_j`` of at
    least ``min(margin, the gap of p)``. Otherwise the path along ``-d`` is tried (when
    ``both_signs``). Where neither sign reaches the budget with the class kept, the row
    gets the largest step along either path at which the class is still kept (bisection
    on that condition, up to the budget's crossing or the path's end), whichever has the
    larger L1; a zero direction leaves the row unchanged.

    Args:
        probs: (B, C) probability vectors.
        directions: (B, C) one direction per row (any real vector: its mean is removed
            and only its direction matters).
        budget: the target L1 distance, in ``(0, 2(1 - 1/C))``.
        margin: the smallest gap to the runner-up class a moved row must keep (a row whose
            own gap is smaller must not shrink it).
        both_signs: also try ``-d`` where ``d`` does not work.

    Returns:
        ``(published, l1)``: (B, C) float64 probability vectors with the arg-max of
        ``probs``, and (B,) their L1 distance to ``probs``: ``budget`` (to about 1e-15)
        where it was reachable, less where it was not.

    Example:
        >>> p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
        >>> q, l1 = perturb_along(p, torch.tensor([[0.0, 1.0, -1.0]]), 0.1)
        >>> q, round(float(l1), 12)
        (tensor([[0.7000, 0.2500, 0.0500]], dtype=torch.float64), 0.1)

    """
    p = check_probabilities(probs)
    directions = check_tensor(directions, "directions")
    if directions.shape != p.shape:
        raise InvalidArgumentError(
            f"directions must have the shape of probs {tuple(p.shape)}, "
            f"got {tuple(directions.shape)}"
        )
    d = check_finite(directions.detach().to(device=p.device, dtype=torch.float64), "directions")
    value = check_budget(budget, p.shape[1])
    margin = check_real(margin, "margin", minimum=0.0)
    both_signs = check_bool(both_signs, "both_signs")
    published, l1, _ = search_along(p, d, value, margin=margin, both_signs=both_signs)
    return published, l1


def search_along(
    p: Tensor, d: Tensor, budget: float, *, margin: float, both_signs: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`perturb_along` on checked float64 tensors, also returning which rows took it all.

    For callers that have validated their arguments and need to know which rows fell
    back (:class:`~vulnscope.cloning.mad.MAD` ranks its vertices by it).

    Args:
        p: (B, C) float64 probability vectors.
        d: (B, C) float64 directions, finite.
        budget: a budget already checked by :func:`check_budget`.
        margin: as in :func:`perturb_along`, >= 0.
        both_signs: as in :func:`perturb_along`.

    Returns:
        ``(published, l1, reached)``: (B, C), (B,), and (B,) bool, True where the whole
        budget was spent with the class kept.

    """
    d = sum_zero_projection(d)
    norm = d.abs().sum(-1, keepdim=True)
    d = torch.where(norm > 0, d / norm.clamp_min(torch.finfo(d.dtype).tiny), 0.0)
    classes = p.argmax(-1)
    required = argmax_gap(p, classes).clamp(max=margin)
    paths = [d, -d] if both_signs else [d]
    published = p.clone()
    reached = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    ends = []
    for direction in paths:
        step, crossed = _budget_step(p, direction, budget)
        moved = _along(p, direction, step)
        take = crossed & _keeps(moved, classes, required) & ~reached
        published[take] = moved[take]
        reached |= take
        ends.append(step)
    rest = ~reached & (norm[:, 0] > 0)
    if bool(rest.any()):
        best, best_l1 = p[rest], torch.zeros_like(norm[rest, 0])
        for direction, end in zip(paths, ends, strict=True):
            kept = _largest_kept(p[rest], direction[rest], end[rest], classes[rest], required[rest])
            kept_l1 = (kept - p[rest]).abs().sum(-1)
            better = kept_l1 > best_l1
            best = torch.where(better[:, None], kept, best)
            best_l1 = torch.where(better, kept_l1, best_l1)
        published[rest] = best
    return published, (published - p).abs().sum(-1), reached


def _keeps(q: Tensor, classes: Tensor, required: Tensor) -> Tensor:
    """Rows of ``q`` whose arg-max is still ``classes`` with at least the ``required`` gap."""
    return (q.argmax(-1) == classes) & (argmax_gap(q, classes) >= required)


def _along(p: Tensor, d: Tensor, step: Tensor) -> Tensor:
    """``Π(p + t d)`` per row, for steps ``t`` (B,).

    Computed as ``Π(p + t (d - max d))`` (Π ignores shifts along ``1``): the entries that
    stay in the support keep their size at large ``t``, so the row still sums to one to
    float64 precision.
    """
    return project_unchecked(p + step[:, None] * (d - d.amax(-1, keepdim=True)))


def _distance(p: Tensor, d: Tensor, step: Tensor) -> Tensor:
    """``||Π(p + t d) - p||_1`` per row, for steps ``t`` (B,)."""
    return (_along(p, d, step) - p).abs().sum(-1)


def _budget_step(p: Tensor, d: Tensor, budget: float) -> tuple[Tensor, Tensor]:
    """The step at which the path along unit-L1 ``d`` is ``budget`` away from ``p``.

    Returns ``(step, crossed)``: where the path reaches the budget, the bisection end whose
    distance is closer to it; where it does not, the last step tried (the path's end).
    """
    low = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
    high = torch.full_like(low, budget)
    far = _distance(p, d, high)
    for _ in range(_ITERATIONS):
        grow = (far < budget) & (high < _MAX_STEP)
        if not bool(grow.any()):
            break
        low = torch.where(grow, high, low)
        high = torch.where(grow, 2.0 * high, high)
        far = _distance(p, d, high)
    crossed = far >= budget
    for _ in range(_ITERATIONS):
        middle = 0.5 * (low + high)
        active = crossed & (middle > low) & (middle < high)
        if not bool(active.any()):
            break
        above = _distance(p, d, middle) >= budget
        high = torch.where(active & above, middle, high)
        low = torch.where(active & ~above, middle, low)
    closer = (budget - _distance(p, d, low)) < (_distance(p, d, high) - budget)
    return torch.where(crossed & closer, low, high), crossed


def _largest_kept(p: Tensor, d: Tensor, end: Tensor, classes: Tensor, required: Tensor) -> Tensor:
    """The point furthest along ``Π(p + t d)``, ``0 <= t <= end``, that keeps the class.

    Bisection on the condition, which ``p`` itself (``t = 0``) satisfies; ``p`` where no
    positive step keeps it to float64 precision.
    """
    low = torch.where(_keeps(_along(p, d, end), classes, required), end, 0.0)
    high = end.clone()
    for _ in range(_ITERATIONS):
        middle = 0.5 * (low + high)
        active = (middle > low) & (middle < high)
        if not bool(active.any()):
            break
        kept = _keeps(_along(p, d, middle), classes, required)
        low = torch.where(active & kept, middle, low)
        high = torch.where(active & ~kept, middle, high)
    return torch.where((low > 0)[:, None], _along(p, d, low), p)
