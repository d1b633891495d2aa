"""α-CROWN: the lower slopes of the relaxations optimised for each bound.

Xu, Zhang, Wang, Wang, Jana, Lin and Hsieh (2021), "Fast and complete: enabling complete
neural network verification with rapid and massively parallel incomplete verifiers": any
lower slope gives a sound relaxation (for ReLU, any slope in [0, 1] through the origin),
so the slopes can be optimised by gradient ascent on the bound itself. Each bounded row
(one margin of one point) has its own slopes, starting from CROWN's; the best bound seen
for each row is kept, so the result is never looser than CROWN's. The intermediate
bounds are CROWN's (not re-optimised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vulnscope.certify.bounds import Activation, Interval
from vulnscope.certify.graph import Graph
from vulnscope.certify.inputs import InputSet
from vulnscope.certify.propagation import backward_bound

__all__ = ["optimised_bound"]


def optimised_bound(
    graph: Graph,
    inputs: InputSet,
    start: int,
    coefficients: Tensor,
    bounds: Sequence[Interval],
    *,
    steps: int = 20,
    lr: float = 0.25,
) -> Tensor:
    """The α-CROWN lower bound of ``A . node_start``: CROWN's, then ``steps`` Adam steps.

    Args:
        graph: the network.
        inputs: the input set.
        start: index of the bounded node.
        coefficients: A, (B, S, *shape of the node).
        bounds: CROWN's intervals of the intermediate nodes.
        steps: optimisation steps (0 gives CROWN's bound).
        lr: Adam's step size on the slopes.

    Returns:
        (B, S) lower bounds, each at least CROWN's.

    """
    specs = coefficients.shape[1]
    slopes: dict[int, Tensor] = {}
    ranges: dict[int, tuple[float, float]] = {}
    for index, node in enumerate(graph.nodes):
        if isinstance(node.op, Activation) and index <= start:
            lower, upper = bounds[node.inputs[0]]
            initial = node.op.lower_slope(lower.unsqueeze(1), upper.unsqueeze(1), "crown")
            slopes[index] = initial.expand(-1, specs, *initial.shape[2:]).detach().clone()
            ranges[index] = node.op.slope_range()
    coefficients = coefficients.detach()
    if not slopes or steps == 0:
        with torch.no_grad():
            return backward_bound(graph, inputs, start, coefficients, bounds, mode="crown")
    parameters = [slope.requires_grad_() for slope in slopes.values()]
    optimiser = torch.optim.Adam(parameters, lr=lr)
    best = None  # the first step's bound is CROWN's: the slopes start there
    for _ in range(steps):
        with torch.enable_grad():
            bound = backward_bound(
                graph, inputs, start, coefficients, bounds, mode="crown", alphas=slopes
            )
            gradients = torch.autograd.grad(-bound.sum(), parameters)
        best = bound.detach() if best is None else torch.maximum(best, bound.detach())
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = gradient
        optimiser.step()
        with torch.no_grad():
            for index, slope in slopes.items():
                slope.clamp_(*ranges[index])
    with torch.no_grad():
        final = backward_bound(
            graph, inputs, start, coefficients, bounds, mode="crown", alphas=slopes
        )
    assert best is not None
    return torch.maximum(best, final)
