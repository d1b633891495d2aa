"""Bounds on a graph: interval propagation, and backward linear bounds (CROWN, the dual).

Two passes over a :class:`~vulnscope.certify.graph.Graph`:

- :func:`interval_bounds`, interval bound propagation (IBP; Gowal et al. 2018, "On the
  effectiveness of interval bound propagation for training verifiably robust models");
- :func:`backward_bound`, the backward linear bound of CROWN (Zhang et al. 2018,
  "Efficient neural network robustness certification with general activation
  functions"): a linear function of one node is passed back to the input through each
  operator's relaxation and minimised over the input set.

With the lower slope of every unstable ReLU equal to its upper slope ``u / (u - l)``,
the backward bound is the dual network of Wong and Kolter (2018), "Provable defenses
against adversarial examples via the convex outer adversarial polytope": their dual
objective, with intermediate bounds from the same dual layer by layer, is exactly this
fixed-slope backward pass (``mode="dual"``; ``tests/certify`` checks it against
``convex-adversarial`` to 1e-5). CROWN instead picks each lower slope adaptively (1 when
``u >= -l``, else 0) and intersects its intermediate bounds with IBP's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from vulnscope.certify.bounds import Interval, LeakyReLU, ReLU, concretize
from vulnscope.certify.graph import Graph
from vulnscope.certify.inputs import InputSet

__all__ = [
    "MARGIN_METHODS",
    "backward_bound",
    "interval_bounds",
    "margin_bounds",
    "margin_specification",
    "node_bounds",
]

MARGIN_METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown", "dual")
"""Methods of :func:`margin_bounds`, loosest and cheapest first."""

_ELEMENTS = 1 << 24
"""Largest coefficient tensor built at once when bounding intermediate nodes."""


def interval_bounds(graph: Graph, inputs: InputSet) -> list[Interval]:
    """Interval bounds of every node's output (IBP), aligned with ``graph.nodes``."""
    bounds: list[Interval] = [(inputs.lower, inputs.upper)]
    for node in graph.nodes[1:]:
        assert node.op is not None
        bounds.append(node.op.interval(*(bounds[i] for i in node.inputs)))
    return bounds


def backward_bound(
    graph: Graph,
    inputs: InputSet,
    start: int,
    coefficients: Tensor,
    bounds: Sequence[Interval | None],
    *,
    mode: str,
    alphas: Mapping[int, Tensor] | None = None,
    stop_at_nonlinear: bool = False,
) -> Tensor:
    """A sound lower bound of ``A . node_start(x')`` over the input set.

    Args:
        graph: the network.
        inputs: the input set.
        start: index of the bounded node.
        coefficients: A, (B, S, *shape of the node).
        bounds: intervals of (at least) every node a nonlinear operator reads.
        mode: ``"crown"`` or ``"dual"`` (the lower slopes of the relaxations).
        alphas: optimised lower slopes per activation node, (B, S, *in) (α-CROWN).
        stop_at_nonlinear: stop at the first nonlinear node on each path and bound it by
            its interval (IBP's bound of a linear function of the last layers).

    Returns:
        (B, S) lower bounds.

    """
    pending: dict[int, Tensor] = {start: coefficients}
    total = coefficients.new_zeros(coefficients.shape[:2])
    for index in range(start, 0, -1):
        pass_back = pending.pop(index, None)
        if pass_back is None:
            continue
        node = graph.nodes[index]
        assert node.op is not None
        if stop_at_nonlinear and not node.op.is_linear:
            interval = bounds[index]
            assert interval is not None
            total = total + concretize(pass_back, interval)
            continue
        alpha = alphas.get(index) if alphas is not None else None
        passed, constant = node.op.backward(
            pass_back, [bounds[i] for i in node.inputs], mode=mode, alpha=alpha
        )
        total = total + constant
        for source, part in zip(node.inputs, passed, strict=True):
            pending[source] = pending[source] + part if source in pending else part
    if 0 in pending:
        total = total + inputs.minimum(pending[0])
    return total


def _relu_like(graph: Graph, index: int) -> bool:
    """True when every reader of node ``index`` is a ReLU or LeakyReLU (stability counts)."""
    readers = [node.op for node in graph.nodes if index in node.inputs]
    return bool(readers) and all(isinstance(op, (ReLU, LeakyReLU)) for op in readers)


def node_bounds(graph: Graph, inputs: InputSet, *, method: str = "crown") -> list[Interval]:
    """Bounds of every node's output, aligned with ``graph.nodes``.

    ``"ibp"`` propagates intervals. ``"crown"`` and ``"dual"`` bound each node a nonlinear
    operator reads (and the logits) by a backward pass to the input, in topological
    order, with the relaxations of the nodes before it; the rest by intervals. CROWN
    keeps the tighter of its bound and the interval, and refines only the neurons the
    interval leaves unstable in front of a ReLU; the dual bounds every neuron and keeps
    its own bound (as Wong and Kolter's network does).

    Returns:
        per node, (lower, upper), each (B, *shape).

    """
    if method == "ibp":
        return interval_bounds(graph, inputs)
    mode = "dual" if method == "dual" else "crown"
    needed = {i for index in graph.nonlinear() for i in graph.nodes[index].inputs}
    needed.add(len(graph.nodes) - 1)
    widest = max(_size(node.shape) for node in graph.nodes)
    bounds: list[Interval] = [(inputs.lower, inputs.upper)]
    for index, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        lower, upper = node.op.interval(*(bounds[i] for i in node.inputs))
        exact = node.op.is_linear and node.inputs == (0,) and inputs.norm == "linf"
        if index in needed and not exact:  # an affine map of an L∞ box is bounded exactly
            lower, upper = lower.clone(), upper.clone()
            flat_low, flat_high = lower.view(lower.shape[0], -1), upper.view(upper.shape[0], -1)
            if mode == "crown" and _relu_like(graph, index):
                rows = ((flat_low < 0) & (flat_high > 0)).any(dim=0).nonzero().flatten()
            else:
                rows = torch.arange(flat_low.shape[1], device=lower.device)
            batch = lower.shape[0]
            step = max(1, _ELEMENTS // max(1, 2 * batch * widest))
            for first in range(0, rows.numel(), step):
                chosen = rows[first : first + step]
                spec = _unit_rows(chosen, node.shape, batch, lower.dtype)
                found = backward_bound(graph, inputs, index, spec, bounds, mode=mode)
                low, high = found[:, : chosen.numel()], -found[:, chosen.numel() :]
                if mode == "crown":
                    low = torch.maximum(low, flat_low[:, chosen])
                    high = torch.minimum(high, flat_high[:, chosen])
                flat_low[:, chosen] = low
                flat_high[:, chosen] = high
        bounds.append((lower, upper))
    return bounds


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


def _unit_rows(chosen: Tensor, shape: tuple[int, ...], batch: int, dtype: torch.dtype) -> Tensor:
    """``[+e_i; -e_i]`` for each chosen neuron i: (batch, 2k, *shape)."""
    count = chosen.numel()
    eye = torch.zeros(count, _size(shape), dtype=dtype, device=chosen.device)
    eye[torch.arange(count, device=chosen.device), chosen] = 1.0
    rows = torch.cat([eye, -eye]).view(2 * count, *shape)
    return rows.unsqueeze(0).expand(batch, *rows.shape)


def margin_specification(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Rows ``e_y - e_j`` for every class j: (B, C, C) (the row j = y is zero)."""
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def margin_bounds(
    graph: Graph,
    inputs: InputSet,
    labels: Tensor,
    *,
    method: str = "crown",
    alpha_steps: int = 20,
    alpha_lr: float = 0.25,
) -> Tensor:
    """Sound lower bounds of ``logit[label] - logit[j]`` over the input set.

    Methods: ``"ibp"`` (intervals, with the last linear layers applied to the margin
    exactly, as in Gowal et al.), ``"crown-ibp"`` (intervals for the intermediate nodes,
    CROWN for the margin; Zhang et al. 2020), ``"crown"``, ``"alpha-crown"`` (CROWN's
    bounds of the intermediate nodes, lower slopes optimised for the margin; Xu et al.
    2021) and ``"dual"`` (Wong and Kolter 2018). All but α-CROWN are differentiable with
    respect to the model's parameters (for provable training).

    Returns:
        (B, C) bounds, ``+inf`` at the label.

    """
    num_classes = graph.nodes[-1].shape[0]
    spec = margin_specification(labels, num_classes, inputs.center.dtype)
    last = len(graph.nodes) - 1
    if method in ("ibp", "crown-ibp"):
        bounds = interval_bounds(graph, inputs)
        margins = backward_bound(
            graph, inputs, last, spec, bounds, mode="crown", stop_at_nonlinear=method == "ibp"
        )
    elif method == "alpha-crown":
        from vulnscope.certify.alpha import optimised_bound

        bounds = node_bounds(graph, inputs, method="crown")
        margins = optimised_bound(graph, inputs, last, spec, bounds, steps=alpha_steps, lr=alpha_lr)
    else:
        bounds = node_bounds(graph, inputs, method=method)
        margins = backward_bound(graph, inputs, last, spec, bounds, mode=method)
    label_column = torch.nn.functional.one_hot(labels, num_classes).bool()
    return margins.masked_fill(label_column, float("inf"))
