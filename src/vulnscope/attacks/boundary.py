r"""Linearised decision boundaries: the geometry under DeepFool and FAB.

Near a point ``x``, the boundary between a class ``b`` the model prefers and a class ``a``
the attack wants is approximated by the hyperplane

.. math:: g(x) + \langle w, \delta \rangle = 0, \qquad g = z_a - z_b, \quad w = \nabla_x g,

whose distance from ``x`` in an Lp norm is ``|g| / |w|_q``, with ``q`` the dual norm
(Hölder). DeepFool steps onto the closest such hyperplane; FAB projects onto the
hyperplane intersected with the input box, for which :func:`hyperplane_box_step` gives
the exact minimal-norm step in L∞, L2 and L1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope.attacks.counting import CountingModel

__all__ = [
    "boundary_distances",
    "dual_norm",
    "hyperplane_box_step",
    "linearise",
    "linearise_target",
    "step_onto",
]

_TINY = 1e-12
_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


def dual_norm(norm: str) -> str:
    """The dual of ``norm``: L∞ and L1 are each other's, L2 is its own."""
    return _DUAL[norm]


def _norms(w: Tensor, norm: str) -> Tensor:
    """Norms over the last dimension of ``w`` (..., D)."""
    if norm == "linf":
        return w.abs().amax(dim=-1)
    if norm == "l2":
        return w.pow(2).sum(dim=-1).sqrt()
    return w.abs().sum(dim=-1)


def _gradients(gaps: Tensor, inputs: Tensor) -> Tensor:
    """(n, K, D): one backward pass per column of ``gaps``, through one retained graph."""
    count = gaps.shape[1]
    rows = [
        torch.autograd.grad(gaps[:, k].sum(), inputs, retain_graph=k + 1 < count)[0].flatten(1)
        for k in range(count)
    ]
    return torch.stack(rows, 1)


def linearise(model: CountingModel, x: Tensor, up: Tensor, down: Tensor) -> tuple[Tensor, Tensor]:
    """Logit gaps ``z_up - z_down`` and their input gradients at ``x``.

    One forward pass with a graph, then one backward pass per column of ``up`` through
    the retained graph (counted by ``model`` as such): the rows of the Jacobian the attack
    looks at, where :func:`vulnscope.diagnostics.fisher.logit_jacobian` takes all ``C``.

    Args:
        model: the counted model.
        x: points (n, ...).
        up: (n, K) classes whose logits the attack raises.
        down: (n,) the class each row must leave behind.

    Returns:
        ``(gaps, grads)``: (n, K) and (n, K, D) with ``D`` the flattened feature size.

    """
    inputs = x.detach().requires_grad_(True)
    logits = model(inputs)
    gaps = logits.gather(1, up) - logits.gather(1, down[:, None])
    return gaps.detach(), _gradients(gaps, inputs)


def linearise_target(
    model: CountingModel, x: Tensor, target: Tensor, *, smooth: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""The gap of each target to its strongest rival, and its input gradient, at ``x``.

    ``g = z_t - max_{j != t} z_j``, positive exactly where the model predicts the target.
    Rows flagged in ``smooth`` take the smooth maximum instead,

    .. math:: g_\tau = z_t - \tau \log \sum_{j \ne t} e^{z_j / \tau}, \qquad \tau = |g|,

    whose gradient blends the rivals within about ``|g|`` of the strongest: where the
    target's region is entered across two boundaries at once, the hard rival alternates
    between them, and a method that steps onto one boundary at a time can cycle.
    ``g_τ <= g``, and the two meet as ``g -> 0``. One forward and one backward pass.

    Args:
        model: the counted model.
        x: points (n, ...).
        target: (n,) target classes.
        smooth: (n,) bool, the rows that take the smooth maximum; ``None`` for none.

    Returns:
        ``(gaps, grads)``: (n, 1) and (n, 1, D).

    """
    inputs = x.detach().requires_grad_(True)
    logits = model(inputs)
    own = logits.gather(1, target[:, None])
    others = logits.scatter(1, target[:, None], float("-inf"))
    rival = others.amax(dim=1, keepdim=True)
    if smooth is not None and bool(smooth.any()):
        tau = (own - rival).detach().abs().clamp_min(_TINY)
        blended = tau * torch.logsumexp(others / tau, dim=1, keepdim=True)
        rival = torch.where(smooth[:, None], blended, rival)
    gaps = own - rival
    return gaps.detach(), _gradients(gaps, inputs)


def boundary_distances(gaps: Tensor, grads: Tensor, norm: str) -> Tensor:
    """Distance in ``norm`` from the point to each linearised boundary: ``|g| / |w|_q``.

    ``gaps`` (n, K), ``grads`` (n, K, D); a zero gradient gives a (huge) finite distance.
    """
    return gaps.abs() / _norms(grads, dual_norm(norm)).clamp_min(_TINY)


def step_onto(gap: Tensor, grad: Tensor, norm: str, *, beyond: Tensor | None = None) -> Tensor:
    """The smallest step in ``norm`` onto the hyperplane ``gap + <grad, δ> = 0``, unbounded.

    ``gap`` (n,) <= 0, ``grad`` (n, D); ``norm`` is ``"l2"`` (``-gap w / |w|_2²``) or
    ``"linf"`` (``-gap sign(w) / |w|_1``), the steps of Moosavi-Dezfooli et al. (2016).
    ``beyond`` (n,) lengthens each step by that much, past the hyperplane.
    """
    length = -gap / _norms(grad, dual_norm(norm)).clamp_min(_TINY)
    if beyond is not None:
        length = length + beyond
    if norm == "l2":
        return (length / _norms(grad, "l2").clamp_min(_TINY))[:, None] * grad
    return length[:, None] * grad.sign()


def hyperplane_box_step(
    w: Tensor, residual: Tensor, lower: Tensor, upper: Tensor, norm: str
) -> Tensor:
    r"""Exact minimal-norm step onto a hyperplane inside a box.

    Solves, row by row,

    .. math:: \min_\delta \|\delta\|_p \quad\text{s.t.}\quad \langle w, \delta \rangle = r,
        \quad l \le \delta \le u

    with ``l <= 0 <= u``. Moving coordinate ``i`` by ``s_i = sign(w_i r)`` is what helps, up
    to its cap ``c_i`` (``u_i`` or ``-l_i``, the side it moves to). The optimum is
    ``δ_i = s_i min(λ, c_i)`` in L∞ and ``δ_i = s_i min(λ |w_i|, c_i)`` in L2 (KKT), with
    ``λ`` the root of a piecewise-linear increasing function found exactly by sorting its
    breakpoints; in L1 it fills the coordinates by decreasing ``|w_i|`` (a fractional
    knapsack). Where the hyperplane misses the box, the step goes to the box's corner
    that gets closest to it (every coordinate at its cap).

    Args:
        w: (n, D) normals.
        residual: (n,) the required ``<w, δ>``.
        lower: (n, D) lower bounds of ``δ``, ``<= 0``.
        upper: (n, D) upper bounds of ``δ``, ``>= 0``.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.

    Returns:
        (n, D) steps ``δ``, in ``w``'s dtype.

    """
    signs = torch.sign(w) * torch.sign(residual)[:, None]
    caps = torch.where(signs > 0, upper, -lower).clamp_min(0.0)
    # The root search runs in float64: the cumulative sums would otherwise drift.
    a, c, need = w.abs().double(), caps.double(), residual.abs().double()[:, None]
    if norm == "l1":
        order = a.argsort(dim=1, descending=True)
        a_sorted, c_sorted = a.gather(1, order), c.gather(1, order)
        filled = (a_sorted * c_sorted).cumsum(dim=1)
        before = filled - a_sorted * c_sorted
        partial = ((need - before) / a_sorted.clamp_min(_TINY)).clamp(min=0.0)
        amount = torch.minimum(partial, c_sorted)
        moves = torch.empty_like(amount).scatter_(1, order, amount)
        return signs * moves.to(w.dtype)
    slope = torch.ones_like(a) if norm == "linf" else a
    finite = slope > 0
    breaks = torch.where(finite, c / slope.clamp_min(_TINY), torch.full_like(c, torch.inf))
    breaks, order = breaks.sort(dim=1)
    a_sorted, s_sorted, c_sorted = a.gather(1, order), slope.gather(1, order), c.gather(1, order)
    saturated = (a_sorted * c_sorted).cumsum(dim=1)
    remaining = (a_sorted * s_sorted).sum(dim=1, keepdim=True) - (a_sorted * s_sorted).cumsum(1)
    values = torch.where(
        torch.isfinite(breaks), saturated + breaks.nan_to_num(posinf=0.0) * remaining, torch.inf
    )
    # h increases, so the breakpoints below the target come first: m of them saturate.
    m = (values < need).sum(dim=1, keepdim=True)
    zero = torch.zeros_like(need)
    done = torch.cat([zero, saturated], dim=1).gather(1, m)
    rate = torch.cat([remaining[:, :1] + a_sorted[:, :1] * s_sorted[:, :1], remaining], dim=1)
    rate = rate.gather(1, m)
    lam = torch.where(rate > _TINY * need, (need - done) / rate.clamp_min(_TINY), torch.inf)
    lam = torch.where(need > 0, lam, zero)
    # lam = inf: the hyperplane misses the box; every coordinate goes to its cap.
    moves = torch.where(torch.isinf(lam), c, torch.minimum(lam * slope, c))
    return signs * moves.to(w.dtype)
