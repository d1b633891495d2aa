"""The certified stage's work on one chunk: certified counts per budget, and the MILP's.

The method is the tightest that fits the time, chosen by a cheap size estimate: the
*work* of CROWN per point, the coefficients its backward passes carry (for each node a
nonlinear operator reads, and the logits, its neurons times the neurons of every node
before it; :func:`backward_work`: about 5e4 for the digits MLP, 7e6 for the digits CNN),
times the audit's rows. α-CROWN (Xu et al. 2021) while that is at most
:data:`ALPHA_LIMIT` (not in ``--quick``), CROWN (Zhang et al. 2018) up to
:data:`CROWN_LIMIT` (about a minute on one core; :data:`QUICK_CROWN_LIMIT`, a few
seconds, in ``--quick``), IBP (Gowal et al. 2018), one interval pass, above. So the
default audit certifies the digits CNN with CROWN and the MLP with α-CROWN; ``--quick``
the MLP with CROWN and the CNN with IBP. IBP runs first everywhere (it costs one interval
pass, and on an IBP-trained network it is often the tighter bound, Zhang et al. 2020);
the chosen method then tries the points IBP did not certify, so each point keeps the
better of two sound answers. Budgets are certified in increasing order, each
only on the points certified at the one before: a point not tried is not counted, so the
count stays a sound lower bound (and CROWN is not run where it already failed).

On ReLU networks of at most :data:`EXACT_NEURONS` ReLUs and no other nonlinearity (the
digits MLP), the sampled points also go to
:func:`~vulnscope.certify.verify` at every L∞ budget: attack, CROWN, then
the MILP of Tjeng, Xiao and Tedrake (2019) for the rest, with a per-point time limit
(so, on a loaded machine, a point may stay "unknown" in one run and be decided in
another).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope.certify import certify, verify
from vulnscope.certify.bounds import ReLU
from vulnscope.certify.graph import Graph

__all__ = [
    "ALPHA_LIMIT",
    "CROWN_LIMIT",
    "EXACT_NEURONS",
    "QUICK_CROWN_LIMIT",
    "CertifiedChunk",
    "ExactCounts",
    "backward_work",
    "certified_chunk",
    "choose_method",
    "exact_applies",
]

ALPHA_LIMIT = 1 << 28
"""Largest rows times :func:`backward_work` certified with α-CROWN (never in ``--quick``)."""

CROWN_LIMIT = 1 << 32
"""Largest rows times :func:`backward_work` certified with CROWN; above it, IBP."""

QUICK_CROWN_LIMIT = 1 << 26
""":data:`CROWN_LIMIT` in ``--quick``."""

EXACT_NEURONS = 512
"""Largest ReLU network (in ReLUs) whose sampled points also go to the MILP."""

_BATCH_WORK = 1 << 22
"""Points certified at once: as many as keep ``points * work`` near this (16 MB in float32;
larger batches of the digits CNN run several times slower)."""


def _numel(shape: Sequence[int]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


def backward_work(graph: Graph) -> int:
    """CROWN's cost estimate per point: :meth:`~vulnscope.certify.graph.Graph.backward_work`."""
    return graph.backward_work()


def choose_method(work: int, rows: int, *, quick: bool) -> str:
    """The method that certifies ``rows`` points of a network of ``work`` in time."""
    cost = work * rows
    if cost <= ALPHA_LIMIT and not quick:
        return "alpha-crown"
    return "crown" if cost <= (QUICK_CROWN_LIMIT if quick else CROWN_LIMIT) else "ibp"


def exact_applies(graph: Graph) -> bool:
    """A ReLU network small enough for the MILP (at most :data:`EXACT_NEURONS` ReLUs)."""
    relus = 0
    for node in graph.nodes[1:]:
        if node.op is None or node.op.is_linear:
            continue
        if not isinstance(node.op, ReLU):
            return False
        relus += _numel(node.shape)
    return relus <= EXACT_NEURONS


@dataclass(frozen=True)
class ExactCounts:
    """On the sampled points at one L∞ budget: the certified ones, and the MILP's verdicts.

    ``certified`` counts the points the stage's method certified; the rest, what
    :func:`~vulnscope.certify.verify` decided.
    """

    certified: int
    verified: int
    falsified: int
    unknown: int


@dataclass(frozen=True)
class CertifiedChunk:
    """One chunk: per norm, the points certified at each positive budget (increasing).

    Attributes:
        samples: rows of the chunk.
        method: the certification method.
        certified: by norm, points certified at each budget.
        exact_samples: sampled rows of the chunk sent to the MILP (0: none).
        exact: per L∞ budget, the certificate's and the MILP's counts on them.

    """

    samples: int
    method: str
    certified: dict[str, list[int]]
    exact_samples: int
    exact: list[ExactCounts]


def _certified(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, method: str, batch: int
) -> Tensor:
    """(B,) bool: certified by IBP, or by ``method`` where IBP was not enough.

    IBP costs one interval pass, and on an IBP-trained network it is often tighter than
    CROWN (Zhang et al. 2020): each point keeps the better of the two sound answers.
    """
    found = certify(model, x, y, norm=norm, eps=eps, method="ibp").certified
    rest = (~found).nonzero().flatten()
    if method != "ibp" and rest.numel():
        tighter = certify(
            model, x[rest], y[rest], norm=norm, eps=eps, method=method, batch_size=batch
        )
        found[rest] = tighter.certified.to(found.device)
    return found


def certified_chunk(
    model: nn.Module,
    graph: Graph,
    x: Tensor,
    y: Tensor,
    *,
    budgets: Mapping[str, Sequence[float]],
    rows: int,
    quick: bool,
    sampled: Sequence[int],
    exact_seconds: float,
    seed: int,
    on_budget: Callable[[], None] = lambda: None,
) -> CertifiedChunk:
    """Certify one chunk at every budget; the MILP on its ``sampled`` rows.

    Args:
        model: the classifier, read as ``graph``.
        graph: the model read by :func:`~vulnscope.certify.graph.read_graph`.
        x: (B, ...) the chunk's inputs in [0, 1].
        y: (B,) their labels.
        budgets: by norm (``"linf"``, ``"l2"``), the positive budgets, increasing.
        rows: the rows of the whole audit (the method fits their count).
        quick: the ``--quick`` settings apply.
        sampled: indices into the chunk of the points sent to the MILP.
        exact_seconds: the MILP's time limit per point.
        seed: the seed of :func:`~vulnscope.certify.verify`'s attack.
        on_budget: called after each budget certified, and each the MILP decided.

    """
    work = backward_work(graph)
    method = choose_method(work, rows, quick=quick)
    batch = max(1, _BATCH_WORK // work)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    certified: dict[str, list[int]] = {}
    masks: dict[float, Tensor] = {}
    for norm, epsilons in budgets.items():
        alive, counts = correct.clone(), []
        for eps in epsilons:
            tried = alive.nonzero().flatten()
            if tried.numel():
                found = _certified(model, x[tried], y[tried], norm, eps, method, batch)
                alive[tried] = found.to(alive.device)
            counts.append(int(alive.sum()))
            if norm == "linf":
                masks[eps] = alive.clone()
            on_budget()
        certified[norm] = counts
    exact: list[ExactCounts] = []
    if sampled and exact_applies(graph):
        chosen = list(sampled)
        for eps, mask in masks.items():
            status = verify(
                model,
                x[chosen],
                y[chosen],
                norm="linf",
                eps=eps,
                time_limit=exact_seconds,
                seed=seed,
            ).status
            exact.append(
                ExactCounts(
                    int(mask[chosen].sum()),
                    status.count("verified"),
                    status.count("falsified"),
                    status.count("unknown"),
                )
            )
            on_budget()
    return CertifiedChunk(int(x.shape[0]), method, certified, len(sampled) if exact else 0, exact)
