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

import math
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
    if chain is None:
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
    # W+ L + W- U = (W (L + U) - |W| (U - L)) / 2, and W+ U + W- L with a plus: two maps
    middle = op.linear(torch.cat([low_coef + high_coef, low_const + high_const]))
    if mode == "dual":  # equal slopes: the two functions differ by a constant only
        rows = low_coef.shape[0]
        spread = torch.cat(
            [middle.new_zeros(rows, *middle.shape[1:]), op.abs_linear(high_const - low_const)]
        )
    else:
        spread = op.abs_linear(torch.cat([high_coef - low_coef, high_const - low_const]))
    bias = op.bias().to(x.dtype)
    shape = (batch, size, -1)
    rows = low_coef.shape[0]
    lower_const = ((middle[rows:] - spread[rows:]) / 2 + bias).flatten(1)
    upper_const = ((middle[rows:] + spread[rows:]) / 2 + bias).flatten(1)
    in_shape = (batch, -1, *x.shape[1:])

    def coefficients(value: Tensor) -> Tensor:
        return value.reshape(shape).transpose(1, 2).reshape(in_shape)

    if mode == "dual":  # one function up to constants: one pass gives both bounds
        found_low, found_high = inputs.range(coefficients(middle[:rows] / 2))
    else:
        found_low = inputs.minimum(coefficients((middle[:rows] - spread[:rows]) / 2))
        found_high = inputs.range(coefficients((middle[:rows] + spread[:rows]) / 2))[1]
    found_low, found_high = found_low + lower_const, found_high + upper_const
    return found_low.view(batch, *node.shape), found_high.view(batch, *node.shape)


def _sensitive(graph: Graph, index: int, interval: Interval) -> Tensor:
    """(B, n) bool: the neurons of node ``index`` whose bounds some reader depends on."""
    lower, upper = interval
    wanted = torch.zeros(lower.shape[0], lower[0].numel(), dtype=torch.bool, device=lower.device)
    for node in graph.nodes:
        if index in node.inputs and node.op is not None and not node.op.is_linear:
            wanted |= node.op.sensitive(lower, upper).flatten(1)
    return wanted


def node_bounds(graph: Graph, inputs: InputSet, *, method: str = "crown") -> list[Interval]:
    """Bounds of every node's output, aligned with ``graph.nodes``.

    ``"ibp"`` propagates intervals. ``"crown"`` and ``"dual"`` bound each node a nonlinear
    operator reads by a backward pass to the input, in topological
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
    bounds: list[Interval] = [(inputs.lower, inputs.upper)]
    for index, node in enumerate(graph.nodes[1:], start=1):
        assert node.op is not None
        interval = node.op.interval(*(bounds[i] for i in node.inputs))
        # an affine map of an L∞ box is bounded exactly by its interval
        exact = inputs.norm == "linf" and _affine_chain(graph, index) is not None
        if index in needed and not exact:
            interval = _refine(graph, inputs, index, bounds, interval, mode)
        bounds.append(interval)
    return bounds


def _refine(
    graph: Graph,
    inputs: InputSet,
    index: int,
    bounds: Sequence[Interval],
    interval: Interval,
    mode: str,
) -> Interval:
    """CROWN's (or the dual's) bounds of node ``index``, given those of the nodes before it.

    Each chosen neuron costs two backward passes (its lower and upper bound); a node
    reading one activation of an affine map of the input can instead be bounded forward
    for all its neurons at the cost of ``dim(x)`` passes (:func:`_one_activation`, the
    same numbers): the cheaper one runs.
    """
    lower, upper = interval
    node = graph.nodes[index]
    batch, size = lower.shape[0], lower[0].numel()
    if mode == "crown":
        wanted = _sensitive(graph, index, interval)
    else:
        wanted = torch.ones(batch, size, dtype=torch.bool, device=lower.device)
    width = int(wanted.sum(dim=1).max())
    if width == 0:
        return interval
    if inputs.center[0].numel() <= 2 * width:  # forward: dim(x) rows; backward: 2 a neuron
        direct = _one_activation(graph, inputs, index, bounds, mode)
        if direct is not None:
            if mode == "crown":
                return torch.maximum(lower, direct[0]), torch.minimum(upper, direct[1])
            return direct
    flat_low, flat_high = lower.reshape(batch, -1), upper.reshape(batch, -1)
    shared = bool(wanted.all())
    if shared:  # the same rows for every sample: the first affine step is shared too
        order = torch.arange(size, device=lower.device).expand(batch, size)
    else:  # each sample's own neurons first, padded with others it does not need
        order = torch.argsort(wanted.to(torch.uint8), dim=1, descending=True, stable=True)
        order = order[:, :width]
    widest = max(math.prod(other.shape) for other in graph.nodes[: index + 1])
    step = max(1, _ELEMENTS // max(1, 2 * batch * widest))
    for first in range(0, width, step):
        chosen = order[:, first : first + step]
        count = chosen.shape[1]
        spec = _unit_rows(chosen, node.shape, lower.dtype, shared=shared)
        found = backward_bound(graph, inputs, index, spec, bounds, mode=mode)
        low, high = found[:, :count], -found[:, count:]
        old_low, old_high = flat_low.gather(1, chosen), flat_high.gather(1, chosen)
        if mode == "crown":
            low, high = torch.maximum(low, old_low), torch.minimum(high, old_high)
        needed = wanted.gather(1, chosen)
        # out of place: the bounds stay differentiable (Wong–Kolter training)
        flat_low = flat_low.scatter(1, chosen, torch.where(needed, low, old_low))
        flat_high = flat_high.scatter(1, chosen, torch.where(needed, high, old_high))
    return flat_low.view_as(lower), flat_high.view_as(upper)


def _unit_rows(
    chosen: Tensor, shape: tuple[int, ...], dtype: torch.dtype, *, shared: bool
) -> Tensor:
    """``[+e_i; -e_i]`` for each sample's chosen neurons (B, k): (B, 2k, *shape)."""
    batch, count = chosen.shape
    if shared:
        eye = torch.zeros(count, math.prod(shape), dtype=dtype, device=chosen.device)
        eye[torch.arange(count, device=chosen.device), chosen[0]] = 1.0
        rows = torch.cat([eye, -eye]).view(2 * count, *shape)
        return rows.unsqueeze(0).expand(batch, *rows.shape)
    units = torch.zeros(batch, count, math.prod(shape), dtype=dtype, device=chosen.device)
    units.scatter_(2, chosen.unsqueeze(-1), 1.0)
    return torch.cat([units, -units], dim=1).view(batch, 2 * count, *shape)


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
