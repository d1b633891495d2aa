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

from vulnscope.certify.bounds import Activation, Affine, Interval, concretize
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


def _affine_chain(graph: Graph, index: int) -> list[Affine] | None:
    """The affine operators from the input to node ``index``, if it is such a chain."""
    chain: list[Affine] = []
    while index != 0:
        op = graph.nodes[index].op
        if not isinstance(op, Affine):
            return None
        chain.append(op)
        index = graph.nodes[index].inputs[0]
    return chain[::-1]


def _one_activation(
    graph: Graph, inputs: InputSet, index: int, bounds: Sequence[Interval], mode: str
) -> Interval | None:
    """CROWN's bounds of an affine node reading an activation of an affine map of the input.

    For ``z = M x + c``, ``y = f(z)`` relaxed by ``a_l z + b_l <= y <= a_u z + b_u`` and the
    node ``W y + b``, the backward bound of each neuron is ``(W+ a_l + W- a_u) M x + ...``;
    computed forward, the coefficients take ``dim(x)`` rows instead of two per neuron:
    the same numbers, many times faster when the node is wider than the input (the second
    convolution of a small CNN). ``None`` where the node does not have this form.
    """
    node = graph.nodes[index]
    if not isinstance(node.op, Affine):
        return None
    activation = graph.nodes[node.inputs[0]]
    if not isinstance(activation.op, Activation):
        return None
    chain = _affine_chain(graph, activation.inputs[0])
    size = inputs.center[0].numel()
    if chain is None or size > 2 * _size(node.shape):
        return None
    x = inputs.center
    basis = torch.eye(size, dtype=x.dtype, device=x.device).view(size, *x.shape[1:])
    zero = x.new_zeros((1, *x.shape[1:]))
    for op in chain:
        basis, zero = op.linear(basis), op.forward(zero)
    lower, upper = bounds[activation.inputs[0]]
    low_slope, low_offset, high_slope, high_offset = activation.op.relaxation(lower, upper, mode)
    batch = x.shape[0]

    def relaxed(slope: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = slope.unsqueeze(1) * basis.unsqueeze(0)  # (B, n, *z)
        return coefficients.flatten(0, 1), slope * zero + offset

    low_coef, low_const = relaxed(low_slope, low_offset)
    high_coef, high_const = relaxed(high_slope, high_offset)
    op = node.op

    def split(value: Tensor) -> tuple[Tensor, Tensor]:
        plain, magnitude = op.linear(value), op.abs_linear(value)
        return (plain + magnitude) / 2, (plain - magnitude) / 2

    (low_pos, low_neg), (high_pos, high_neg) = split(low_coef), split(high_coef)
    (lc_pos, lc_neg), (hc_pos, hc_neg) = split(low_const), split(high_const)
    bias = op.bias().to(x.dtype)
    shape = (batch, size, -1)
    lower_coef = (low_pos + high_neg).reshape(shape).transpose(1, 2)
    upper_coef = (high_pos + low_neg).reshape(shape).transpose(1, 2)
    lower_const = (lc_pos + hc_neg + bias).flatten(1)
    upper_const = (hc_pos + lc_neg + bias).flatten(1)
    in_shape = (batch, -1, *x.shape[1:])
    found_low = inputs.minimum(lower_coef.reshape(in_shape)) + lower_const
    found_high = -inputs.minimum(-upper_coef.reshape(in_shape)) + upper_const
    return found_low.view(batch, *node.shape), found_high.view(batch, *node.shape)


def _sensitive_rows(graph: Graph, index: int, interval: Interval) -> Tensor:
    """Flat indices of node ``index``'s neurons whose bounds some reader is sensitive to."""
    lower, upper = interval
    wanted = torch.zeros(lower[0].numel(), dtype=torch.bool, device=lower.device)
    for node in graph.nodes:
        if index in node.inputs and node.op is not None and not node.op.is_linear:
            wanted |= node.op.sensitive(lower, upper).flatten(1).any(dim=0)
    if index == len(graph.nodes) - 1:
        wanted[:] = True
    return wanted.nonzero().flatten()


def node_bounds(graph: Graph, inputs: InputSet, *, method: str = "crown") -> list[Interval]:
    """Bounds of every node's output, aligned with ``graph.nodes``.

    ``"ibp"`` propagates intervals. ``"crown"`` and ``"dual"`` bound each node a nonlinear
    operator reads (and the logits) by a backward pass to the input, in topological
    order, with the relaxations of the nodes before it; the rest by intervals. CROWN
    keeps the tighter of its bound and the interval, and refines only the neurons whose
    bounds a reader's relaxation depends on (:meth:`BoundOp.sensitive`: an unstable
    ReLU, a max-pool window without a sure winner); the dual bounds every neuron and
    keeps its own bound (as Wong and Kolter's network does).

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
        direct = (
            None
            if exact or index not in needed
            else _one_activation(graph, inputs, index, bounds, mode)
        )
        if direct is not None:
            if mode == "crown":
                lower, upper = torch.maximum(lower, direct[0]), torch.minimum(upper, direct[1])
            else:
                lower, upper = direct
        elif index in needed and not exact:  # an affine map of an L∞ box is bounded exactly
            lower, upper = lower.clone(), upper.clone()
            flat_low, flat_high = lower.view(lower.shape[0], -1), upper.view(upper.shape[0], -1)
            if mode == "crown":
                rows = _sensitive_rows(graph, index, (lower, upper))
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
