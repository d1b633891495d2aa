"""What the exact solvers share: the operators they encode, their answer, their driver.

The MILP (:mod:`vulnscope.certify.milp`) and the SMT formula
(:mod:`vulnscope.certify.smt`) encode the same piecewise-linear operators of a graph read
by :func:`~vulnscope.certify.graph.read_graph`: affine maps, residual additions, ReLU
and max pooling. Any other operator (a smooth activation, or a leaky one) leaves the
point "unknown", with the layer named. Each answers one point with an :class:`Outcome`;
:func:`solve_points` gives them CROWN's node bounds and the classes left to beat.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from vulnscope.certify.bounds import BoundOp, MaxPool2d
from vulnscope.certify.graph import Graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import margin_bounds, node_bounds

__all__ = [
    "Outcome",
    "Solver",
    "Status",
    "encoder_of",
    "pool_windows",
    "solve_points",
    "unsupported_node",
]

Value = TypeVar("Value")

Status = Literal["verified", "falsified", "unknown"]
"""A point's verdict."""


@dataclass(frozen=True)
class Outcome:
    """A solver's answer for one point.

    Attributes:
        status: ``"verified"``, ``"falsified"`` (``counterexample`` is a candidate the
            caller checks with a forward pass) or ``"unknown"``.
        reason: why ``"unknown"`` (``""`` otherwise).
        counterexample: (size,) the flat input the solver found, or ``None``.

    """

    status: Status
    reason: str = ""
    counterexample: np.ndarray | None = None


def encoder_of(op: BoundOp, encoders: Mapping[type, Value]) -> Value | None:
    """The entry of ``encoders`` for ``op``'s class or its nearest base class listed."""
    for kind in type(op).__mro__:
        if kind in encoders:
            return encoders[kind]
    return None


def unsupported_node(graph: Graph, encoders: Mapping[type, object]) -> str:
    """Why ``graph`` cannot be encoded (its first node no encoder takes), or ``""``."""
    for node in graph.nodes[1:]:
        if node.op is None or encoder_of(node.op, encoders) is None:
            return (
                f"layer {node.name!r} ({type(node.op).__name__}) is not encoded by the exact "
                "solvers, which take ReLU networks (affine, residual, ReLU and max-pooling "
                "layers) only"
            )
    return ""


def pool_windows(op: MaxPool2d) -> list[np.ndarray]:
    """Per output element of a max pooling (flattened order), its window's flat input indices.

    The input is (C, H, W) per sample (``op.input_shapes[0]``); padding is never a
    candidate (it is ``-inf``).
    """
    channels, height, width = op.input_shapes[0]
    positions = torch.arange(channels * height * width, dtype=torch.float64)
    pad_h, pad_w = op.padding
    padded = functional.pad(
        positions.reshape(channels, 1, height, width), (pad_w, pad_w, pad_h, pad_h), value=-1.0
    )
    windows = functional.unfold(padded, op.kernel_size, stride=op.stride)  # (C, K, L)
    rows = windows.permute(0, 2, 1).reshape(-1, windows.shape[1]).long().numpy()
    return [row[row >= 0] for row in rows]


Solver = Callable[..., Outcome]
"""``(graph, bounds, label, classes, *, time_limit) -> Outcome`` for one point."""


def solve_points(
    solve: Solver,
    graph: Graph,
    x: Tensor,
    labels: Tensor,
    *,
    eps: float,
    bounds: tuple[float, float],
    time_limit: float,
) -> Iterator[tuple[Outcome, float]]:
    """Run ``solve`` on each point's L∞ box; yield its outcome and its seconds.

    The solver gets CROWN's bounds of every node on the point's box, and only the
    classes whose CROWN margin bound is not positive, the most dangerous first (the
    others cannot beat the label anywhere in the box).

    Args:
        solve: the solver (:func:`vulnscope.certify.milp.solve_point` or
            :func:`vulnscope.certify.smt.solve_point`).
        graph: the network, read in float64.
        x: the points (B, *in), float64.
        labels: their classes (B,).
        eps: the L∞ radius.
        bounds: the input box.
        time_limit: seconds per point.

    """
    if x.shape[0] == 0:
        return
    points = input_set(x, norm="linf", eps=eps, bounds=bounds)
    with torch.no_grad():
        nodes = node_bounds(graph, points, method="crown")
        margins = margin_bounds(graph, points, labels, method="crown").cpu().numpy()
    for k in range(x.shape[0]):
        started = time.perf_counter()
        classes = [int(j) for j in np.argsort(margins[k]) if margins[k, j] <= 0]
        flat = [
            (low[k].flatten().cpu().numpy(), high[k].flatten().cpu().numpy()) for low, high in nodes
        ]
        outcome = (
            solve(graph, flat, int(labels[k]), classes, time_limit=time_limit)
            if classes
            else Outcome("verified")
        )
        yield outcome, time.perf_counter() - started
