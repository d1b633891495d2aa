r"""The exact minimal L∞ perturbation of a ReLU network, by mixed-integer programming.

Tjeng, Xiao and Tedrake (2019), "Evaluating robustness of neural networks with mixed
integer programming", minimum adversarial distortion: for each class ``j`` the program

.. math::
    \min t \quad \text{s.t.} \quad |x' - x|_\infty \le t, \quad
    x' \in [\text{low}, \text{high}]^d, \quad f_y(x') - f_j(x') \le 0,

with the network encoded as in :mod:`vulnscope.certify.milp`, and the smallest ``t`` over
the classes. The ReLU bounds are CROWN's on the whole input box, where every radius
lives; each class's solve is cut off at the best radius found so far.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_inputs,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model_matches_inputs,
    check_real,
)
from vulnscope.certify.exact import unsupported_node
from vulnscope.certify.graph import Graph, read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.milp import ENCODERS, Interval, encode
from vulnscope.certify.program import Expression
from vulnscope.certify.propagation import margin_bounds, node_bounds
from vulnscope.errors import InvalidTypeError, ModelError
from vulnscope.models.state import preserved_model_state

__all__ = ["exact_radius"]


def exact_radius(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    time_limit: float = 30.0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Per point, the smallest L∞ radius at which some input of the box is misclassified.

    The exact answer for the real-valued network (its float64 copy), within HiGHS's
    tolerances: the lower side of the minimal-perturbation figure that an attack's
    radius (an upper bound) brackets from above.

    Args:
        model: a ReLU classifier in eval mode (affine, residual, ReLU and max-pooling
            layers), logits out.
        inputs: points (N, *in) inside ``bounds``.
        labels: their classes (N,), int64.
        time_limit: solver seconds per point, shared among the classes.
        bounds: the input box.

    Returns:
        (N,) in ``inputs``' dtype: 0 for a misclassified point, ``inf`` where no input
        of the box is misclassified, NaN where the solver ran out of time.

    Raises:
        ModelError: a layer the MILP does not encode (named), or a model
            :func:`~vulnscope.certify.graph.read_graph` cannot read.

    Example:
        >>> import torch
        >>> from vulnscope.certify import exact_radius
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 2)).double().eval()
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        ...     _ = model[0].bias.zero_()
        >>> exact_radius(model, torch.tensor([[0.75]], dtype=torch.float64), torch.tensor([0]))
        tensor([0.7500], dtype=torch.float64)

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module (exact_radius reads its layers), got "
            f"{type(model).__name__}"
        )
    time_limit = check_real(time_limit, "time_limit", minimum=0.0, exclusive=True)
    bounds = check_bounds(bounds)
    x = check_inputs(inputs, bounds=bounds, name="inputs")
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    check_model_matches_inputs(model, x)
    with preserved_model_state(model), torch.no_grad():
        logits = check_logits(model(x), x.shape[0])
    check_labels_in_range(y, logits.shape[1], "labels")
    x64 = x.double()
    graph = read_graph(copy.deepcopy(model).double().eval(), x64)
    why = unsupported_node(graph, ENCODERS)
    if why:
        raise ModelError(f"exact_radius needs a ReLU network: {why}")
    # the farthest corner of the box: every radius that matters is at most this
    reach = torch.maximum(x64 - bounds[0], bounds[1] - x64).flatten(1).amax(1)
    whole_box = input_set(x64, norm="linf", eps=reach, bounds=bounds)
    with torch.no_grad():
        nodes = node_bounds(graph, whole_box, method="crown")
        margins = margin_bounds(graph, whole_box, y, method="crown").cpu().numpy()
    radii = torch.zeros(x.shape[0], dtype=torch.float64)
    for k in range(x.shape[0]):
        if int(logits[k].argmax()) == int(y[k]):
            flat = [
                (low[k].flatten().cpu().numpy(), high[k].flatten().cpu().numpy())
                for low, high in nodes
            ]
            classes = [int(j) for j in np.argsort(margins[k]) if margins[k, j] <= 0]
            radii[k] = _radius(
                graph,
                flat,
                x64[k].flatten().cpu().numpy(),
                int(y[k]),
                classes,
                reach=float(reach[k]),
                time_limit=time_limit,
            )
    return radii.to(device=x.device, dtype=x.dtype)


def _radius(
    graph: Graph,
    bounds: list[Interval],
    center: np.ndarray,
    label: int,
    classes: list[int],
    *,
    reach: float,
    time_limit: float,
) -> float:
    """The smallest radius over ``classes`` (``inf`` if none, NaN if a solve timed out)."""
    deadline = time.perf_counter() + time_limit
    program, logits = encode(graph, bounds)
    n = center.shape[0]
    t = program.variables(np.zeros(1), np.array([reach]))
    x = Expression(np.eye(n), np.zeros(n))
    spread = Expression(np.repeat(t.coef, n, 0), np.zeros(n))
    program.constrain(x - spread, -np.inf, center)
    program.constrain(x + spread, center, np.inf)
    best, undecided = np.inf, False
    for done, j in enumerate(classes):
        left = deadline - time.perf_counter()
        margin = logits.rows(np.array([label])) - logits.rows(np.array([j]))
        result = program.minimize(
            t,
            time_limit=max(left, 0.0) / (len(classes) - done),
            cutoff=None if np.isinf(best) else best,
            extra=[(margin, -np.inf, 0.0)],
        )
        if result.value is not None:
            best = min(best, result.value)
        if result.status not in (0, 2) and (result.bound is None or result.bound < best):
            undecided = True
    return float("nan") if undecided else float(best)
