"""Certified robustness: sound bounds on a classifier's margins over a perturbation set.

An attack that fails proves nothing; a certificate does. :func:`certify` bounds every
margin ``logit[label] - logit[j]`` from below over all inputs within ``eps`` of each
point (in L∞ or L2) *and* inside the input box; a point is certified when every bound is
positive: no input of the set changes its class. :func:`certified_radius` finds, per
point, the largest certified ``eps`` by bisection: the lower side of a minimal-
perturbation figure, whose upper side is an attack's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_choice,
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_norm,
    check_real,
)
from vulnscope.certify.graph import Graph, read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import margin_bounds
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["METHODS", "Certificate", "certified_radius", "certify"]

METHODS = ("ibp", "crown", "alpha-crown", "dual")
"""Certification methods, from the loosest and fastest to the tightest."""

_ELEMENTS_PER_BATCH = 1 << 23
"""Default batches keep a margin's coefficients on the widest node below this size."""


@dataclass(frozen=True)
class Certificate:
    """Sound lower bounds of each point's margins over its perturbation set.

    Attributes:
        certified: (N,) bool, True where every other class's logit is provably below the
            label's for every input in the ball intersected with the input box.
        margins: (N, C) lower bounds of ``logit[label] - logit[j]``; ``+inf`` at the label.
        method: ``"ibp"``, ``"crown"``, ``"alpha-crown"`` or ``"dual"``.
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius.

    """

    certified: Tensor
    margins: Tensor
    method: str
    norm: str
    eps: float

    @property
    def accuracy(self) -> float:
        """The share of points certified.

        A sound lower bound of the robust accuracy against every attack in the threat model.
        """
        return float(self.certified.float().mean())


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module returning logits, got {type(model).__name__}"
        )
    return model


def _batches(graph: Graph, count: int, batch_size: int | None) -> int:
    if batch_size is not None:
        return check_int(batch_size, "batch_size")
    widest = max(math.prod(node.shape) for node in graph.nodes)
    classes = graph.nodes[-1].shape[0]
    return max(1, min(count, _ELEMENTS_PER_BATCH // max(1, widest * classes)))


def _prepare(
    model: nn.Module, inputs: object, labels: object, bounds: tuple[float, float]
) -> tuple[Graph, Tensor, Tensor]:
    """The model's graph and the validated inputs and labels."""
    x = check_inputs(inputs, bounds=bounds, name="inputs")
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    graph = read_graph(model, x[: min(8, x.shape[0])])
    check_labels_in_range(y, graph.nodes[-1].shape[0], "labels")
    return graph, x, y


def _margins(
    graph: Graph,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    eps: Tensor,
    method: str,
    bounds: tuple[float, float],
    size: int,
) -> Tensor:
    """The (N, C) margin bounds at per-point radii ``eps``, ``size`` points at a time."""
    parts = []
    with torch.no_grad():
        for start in range(0, x.shape[0], size):
            stop = start + size
            region = input_set(x[start:stop], norm=norm, eps=eps[start:stop], bounds=bounds)
            parts.append(margin_bounds(graph, region, y[start:stop], method=method).detach())
    return torch.cat(parts)


def certify(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: str = "linf",
    eps: float,
    method: str = "crown",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
) -> Certificate:
    """Certify ``model``'s predictions on ``inputs`` against every perturbation within eps.

    Methods, loosest and fastest first: ``"ibp"`` (interval bound propagation, Gowal et al.
    2018), ``"crown"`` (backward linear bounds with adaptive slopes, Zhang et al. 2018),
    ``"alpha-crown"`` (slopes optimised by gradient, Xu et al. 2021; never looser than
    CROWN) and ``"dual"`` (the dual network of Wong and Kolter 2018, which is the
    backward pass with each lower slope equal to the upper one). The model is bounded as
    it computes in eval mode: its layers must be ones :mod:`vulnscope.certify.bounds`
    knows (an unsupported one is named in the error).

    Bounds are computed in the inputs' floating type; they are sound up to its rounding
    (about 1e-6 of the logits' scale in float32).

    Args:
        model: the classifier, logits out (a final softmax is refused: certify logits).
        inputs: (N, *in) points inside ``bounds``.
        labels: (N,) int64 classes to certify (usually the true labels: a misclassified
            point is never certified).
        norm: ``"linf"`` or ``"l2"``.
        eps: radius, > 0, in input units.
        method: ``"ibp"``, ``"crown"``, ``"alpha-crown"`` or ``"dual"``.
        bounds: the input box ``(low, high)``, part of the perturbation set.
        batch_size: points bounded at once (default: as many as keep the coefficients
            near 32 MB).

    Returns:
        the :class:`Certificate`.

    Example:
        >>> import torch
        >>> from vulnscope.certify import certify
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        >>> certify(model, torch.tensor([[0.9, 0.1]]), torch.tensor([0]), eps=0.3).certified
        tensor([True])

    """
    network = _check_model(model)
    norm = check_norm(norm, allowed=("linf", "l2"))
    radius = check_real(eps, "eps", minimum=0.0, exclusive=True)
    method = check_choice(method, "method", METHODS)
    bounds = check_bounds(bounds)
    if not isinstance(inputs, Tensor):
        raise InvalidTypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    graph, x, y = _prepare(network, inputs, labels, bounds)
    radii = torch.full((x.shape[0],), radius, dtype=x.dtype, device=x.device)
    size = _batches(graph, x.shape[0], batch_size)
    margins = _margins(graph, x, y, norm=norm, eps=radii, method=method, bounds=bounds, size=size)
    certified = (margins > 0).all(dim=1)
    return Certificate(certified=certified, margins=margins, method=method, norm=norm, eps=radius)


def certified_radius(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: str = "linf",
    method: str = "crown",
    bounds: tuple[float, float] = (0.0, 1.0),
    tol: float = 1e-3,
    max_eps: float = 1.0,
    batch_size: int | None = None,
) -> Tensor:
    """Per point, the largest radius certified, found by bisection to within ``tol``.

    Each returned radius is one at which :func:`certify` certified the point (0 where
    none was, e.g. for a misclassified point; ``max_eps`` where even that was).

    Args:
        model: the classifier, logits out.
        inputs: (N, *in) points inside ``bounds``.
        labels: (N,) int64 classes to certify.
        norm: ``"linf"`` or ``"l2"``.
        method: one of :data:`METHODS`.
        bounds: the input box.
        batch_size: points bounded at once (default: automatic).
        tol: width of the final bracket, > 0.
        max_eps: the largest radius tried, > 0.

    Returns:
        (N,) radii.

    """
    network = _check_model(model)
    norm = check_norm(norm, allowed=("linf", "l2"))
    method = check_choice(method, "method", METHODS)
    bounds = check_bounds(bounds)
    tol = check_real(tol, "tol", minimum=0.0, exclusive=True)
    max_eps = check_real(max_eps, "max_eps", minimum=0.0, exclusive=True)
    if not isinstance(inputs, Tensor):
        raise InvalidTypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if tol >= max_eps:
        raise InvalidArgumentError(f"tol must be smaller than max_eps ({max_eps}), got {tol}")
    graph, x, y = _prepare(network, inputs, labels, bounds)
    size = _batches(graph, x.shape[0], batch_size)
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.full_like(low, max_eps)

    def certified_at(radii: Tensor) -> Tensor:
        margins = _margins(
            graph, x, y, norm=norm, eps=radii, method=method, bounds=bounds, size=size
        )
        return (margins > 0).all(dim=1)

    top = certified_at(high)
    low = torch.where(top, high, low)
    while bool(((high - low) > tol).any()):
        middle = (low + high) / 2
        holds = certified_at(middle)
        low = torch.where(holds, middle, low)
        high = torch.where(holds, high, middle)
    return low
