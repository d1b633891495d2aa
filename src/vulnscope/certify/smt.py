"""Exact verification of ReLU networks with an SMT solver (z3).

Huang, Kwiatkowska, Wang and Wu (2017), "Safety verification of deep neural networks":
the network is a formula of linear real arithmetic, each ReLU an if-then-else and each
max-pooling window a chain of them, over one real variable per input within the box
(the ball intersected with the input box). The query "some input of the box gives some
other class a logit at least the label's" is unsatisfiable exactly when the point is
verified, and a model of it is a counterexample. The weights enter as the exact rationals
of their float64 values, and the formula holds no bound of any other method, so its
answer is independent of the MILP's (:mod:`vulnscope.certify.milp`) and cross-checks it
(:func:`~vulnscope.certify.verify` only leaves out the classes CROWN proves beaten).

z3 is an optional dependency: ``pip install 'vulnscope[smt]'``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import reduce
from types import ModuleType
from typing import Any

import numpy as np

from vulnscope.certify.bounds import Add, Affine, MaxPool2d, ReLU
from vulnscope.certify.exact import Outcome, encoder_of, pool_windows
from vulnscope.certify.graph import Graph
from vulnscope.errors import InvalidArgumentError, ModelError

__all__ = ["ENCODERS", "load_z3", "solve_point"]

_INSTALL = "pip install 'vulnscope[smt]' (or: pip install z3-solver)"

Terms = list[Any]
"""One z3 arithmetic term per (flattened) element of a node's output."""


def load_z3() -> ModuleType:
    """The ``z3`` module, or an error that says how to install it."""
    try:
        import z3
    except ImportError:
        raise InvalidArgumentError(
            f"method='smt' needs the z3 solver, which is not installed: {_INSTALL}; "
            "or use method='milp'"
        ) from None
    module: ModuleType = z3
    return module


def _rational(z3: ModuleType, value: float) -> Any:
    """The exact rational value of a float64 as a z3 constant."""
    exact = Fraction(float(value))
    return z3.Q(exact.numerator, exact.denominator)


def _affine(z3: ModuleType, op: Affine, x: Terms) -> Terms:
    weight, bias = op.matrix()
    w, b = weight.detach().cpu().numpy(), bias.detach().cpu().numpy()
    return [
        z3.Sum(
            [_rational(z3, b[r])] + [_rational(z3, w[r, c]) * x[c] for c in np.flatnonzero(w[r])]
        )
        for r in range(w.shape[0])
    ]


def _add(z3: ModuleType, op: Add, x: Terms, y: Terms) -> Terms:
    return [a + b for a, b in zip(x, y, strict=True)]


def _relu(z3: ModuleType, op: ReLU, x: Terms) -> Terms:
    return [z3.If(t > 0, t, 0) for t in x]


def _max_pool(z3: ModuleType, op: MaxPool2d, x: Terms) -> Terms:
    return [
        reduce(lambda a, b: z3.If(a >= b, a, b), [x[k] for k in window])
        for window in pool_windows(op)
    ]


ENCODERS: dict[type, Callable[..., Terms]] = {
    Affine: _affine,
    Add: _add,
    ReLU: _relu,
    MaxPool2d: _max_pool,
}
"""Each operator the formula encodes exactly, with its encoder ``(z3, op, *inputs) ->
output``; any other operator leaves the point "unknown"."""


def solve_point(
    graph: Graph,
    bounds: Sequence[tuple[np.ndarray, np.ndarray]],
    label: int,
    classes: Sequence[int],
    *,
    time_limit: float,
) -> Outcome:
    """Ask z3 for an input of the box on which some class of ``classes`` ties or beats ``label``.

    Args:
        graph: a network of :data:`ENCODERS` operators.
        bounds: per node, flat (size,) lower and upper bounds; only the input node's,
            the input box, are used (the formula needs no other bound).
        label: the point's class.
        classes: the classes to beat (all the others, or those no certificate excludes).
        time_limit: z3's timeout in seconds.

    Returns:
        ``"verified"`` when the query is unsatisfiable, ``"falsified"`` with the model's
        input as a candidate counterexample, ``"unknown"`` with z3's reason otherwise.

    """
    z3 = load_z3()
    started = time.perf_counter()
    lower, upper = bounds[0]
    inputs = [z3.Real(f"x{k}") for k in range(lower.shape[0])]
    solver = z3.Solver()
    solver.set("random_seed", 0)
    for x, low, high in zip(inputs, lower, upper, strict=True):
        solver.add(x >= _rational(z3, low), x <= _rational(z3, high))
    values: list[Terms] = [inputs]
    for node in graph.nodes[1:]:
        encoder = encoder_of(node.op, ENCODERS) if node.op is not None else None
        if encoder is None:
            raise ModelError(f"the SMT formula does not encode layer {node.name!r}")
        values.append(encoder(z3, node.op, *(values[i] for i in node.inputs)))
    logits = values[-1]
    solver.add(z3.Or([logits[j] >= logits[label] for j in classes]))
    left = time_limit - (time.perf_counter() - started)
    solver.set("timeout", max(1, int(1000 * left)))
    answer = solver.check()
    if answer == z3.unsat:
        return Outcome("verified")
    if answer == z3.sat:
        model = solver.model()
        found = [model.eval(x, model_completion=True).as_fraction() for x in inputs]
        return Outcome("falsified", counterexample=np.array([float(v) for v in found]))
    return Outcome("unknown", f"SMT: z3 returned unknown ({solver.reason_unknown()})")
