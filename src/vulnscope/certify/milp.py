r"""Exact verification of ReLU networks as mixed-integer linear programs.

Tjeng, Xiao and Tedrake (2019), "Evaluating robustness of neural networks with mixed
integer programming": a ReLU whose pre-activation bounds ``[l, u]`` straddle zero becomes
one binary variable ``a`` and the big-M constraints

.. math::
    y \ge 0, \quad y \ge z, \quad y \le u a, \quad y \le z - l (1 - a),

exact for every ``z`` in ``[l, u]``; a ReLU whose bounds do not straddle zero is linear on
the input set and needs no binary. A max-pooling window is encoded alike, one binary per
input that can be the maximum. The bounds come from CROWN
(:func:`~vulnscope.certify.propagation.node_bounds`): the tighter they are, the fewer
binaries and the smaller the big Ms. Affine layers and residual additions are linear,
and each node's value is kept as an affine function of the program's variables, so they
add no variable at all. The programs are solved by HiGHS (:func:`scipy.optimize.milp`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from vulnscope.certify.bounds import Add, Affine, MaxPool2d, ReLU
from vulnscope.certify.exact import Outcome, encoder_of, pool_windows
from vulnscope.certify.graph import Graph
from vulnscope.certify.program import Array, Expression, Minimum, Program
from vulnscope.errors import ModelError

__all__ = ["ENCODERS", "MARGIN_TOLERANCE", "Interval", "encode", "solve_point"]

MARGIN_TOLERANCE = 1e-6
"""A class is verified when its margin is proved above this, a solver's round-off margin."""

Interval = tuple[Array, Array]
"""Flat (size,) float64 lower and upper bounds of one node's output."""


def _relu(program: Program, z: Expression, lower: Array, upper: Array) -> Expression:
    """Tjeng et al.'s big-M encoding of ``relu(z)``, binaries for the unstable units only."""
    active, unstable = lower >= 0, (lower < 0) & (upper > 0)
    index = np.flatnonzero(unstable)
    low, high = lower[index], upper[index]
    y = program.variables(np.zeros(index.size), high)
    a = program.variables(np.zeros(index.size), np.ones(index.size), integral=True)
    zu = z.rows(index)
    program.constrain(y - zu, 0.0, np.inf)
    program.constrain(y - zu - a.scale(low), -np.inf, -low)
    program.constrain(y - a.scale(high), -np.inf, 0.0)
    coef = np.zeros((z.const.shape[0], program.size))
    const = np.zeros(z.const.shape[0])
    live = z.pad(program.size)
    coef[active], const[active] = live.coef[active], live.const[active]
    coef[index] = y.pad(program.size).coef
    return Expression(coef, const)


def _max_pool(
    program: Program, x: Expression, lower: Array, upper: Array, windows: list[Array]
) -> Expression:
    """Tjeng et al.'s encoding of a window's maximum: one binary per possible maximiser."""
    outputs: list[Expression] = []
    for window in windows:
        # an input whose upper bound stays below the largest lower bound is never the max
        winner = window[np.argmax(lower[window])]
        floor = lower[winner]
        keep = np.union1d(window[upper[window] > floor], [winner])
        if keep.size == 1:
            outputs.append(x.rows(keep))
            continue
        top = upper[keep].max()
        y = program.variables(np.array([floor]), np.array([top]))
        a = program.variables(np.zeros(keep.size), np.ones(keep.size), integral=True)
        program.constrain(Expression(a.coef.sum(0, keepdims=True), np.zeros(1)), 1.0, 1.0)
        picks = x.rows(keep)
        spread = top - lower[keep]
        ys = Expression(np.repeat(y.coef, keep.size, 0), np.repeat(y.const, keep.size))
        program.constrain(ys - picks, 0.0, np.inf)
        program.constrain(ys - picks + a.scale(spread), -np.inf, spread)
        outputs.append(y)
    n = program.size
    padded = [e.pad(n) for e in outputs]
    return Expression(
        np.concatenate([e.coef for e in padded]), np.concatenate([e.const for e in padded])
    )


def _affine(program: Program, op: Affine, x: Expression, bounds: Interval) -> Expression:
    weight, bias = op.matrix()
    return x.affine(weight.detach().cpu().numpy(), bias.detach().cpu().numpy())


def _add(program: Program, op: Add, x: Expression, y: Expression, *bounds: Interval) -> Expression:
    return x + y


def _relu_node(program: Program, op: ReLU, x: Expression, bounds: Interval) -> Expression:
    return _relu(program, x, *bounds)


def _max_pool_node(program: Program, op: MaxPool2d, x: Expression, bounds: Interval) -> Expression:
    return _max_pool(program, x, *bounds, pool_windows(op))


ENCODERS: dict[type, Callable[..., Expression]] = {
    Affine: _affine,
    Add: _add,
    ReLU: _relu_node,
    MaxPool2d: _max_pool_node,
}
"""Each operator the MILP encodes exactly, with its encoder ``(program, op, *inputs,
*input_bounds) -> output``; any other operator leaves the point "unknown"."""


def encode(graph: Graph, bounds: Sequence[Interval]) -> tuple[Program, Expression]:
    """The network on the input box ``bounds[0]`` as a program, and its logits' functions.

    Args:
        graph: a network of :data:`ENCODERS` operators only
            (:func:`~vulnscope.certify.exact.unsupported_node` says).
        bounds: per node, sound flat (size,) float64 lower and upper bounds of its output
            on the input set; the input node's are the input box.

    Returns:
        The program, whose first variables are the flattened input, and the logits as
        functions of its variables.

    """
    program = Program()
    values = [program.variables(*bounds[0])]
    for node in graph.nodes[1:]:
        encoder = encoder_of(node.op, ENCODERS) if node.op is not None else None
        if encoder is None:
            raise ModelError(f"the MILP does not encode layer {node.name!r}")
        values.append(
            encoder(
                program,
                node.op,
                *(values[i] for i in node.inputs),
                *(bounds[i] for i in node.inputs),
            )
        )
    return program, values[-1]


def solve_point(
    graph: Graph,
    bounds: Sequence[Interval],
    label: int,
    classes: Sequence[int],
    *,
    time_limit: float,
) -> Outcome:
    """Minimise ``logit[label] - logit[j]`` over the input box for each class ``j`` in turn.

    Each solve looks only below the cutoff :data:`MARGIN_TOLERANCE`: an infeasible program
    proves the margin above it (HiGHS's feasibility tolerance, 1e-7, is well inside it),
    a negative minimum is a counterexample, and the search stops there. The time left is
    shared evenly among the classes still to solve; a class whose solve runs out of time
    is still verified when HiGHS's dual bound is above the tolerance.

    Args:
        graph: a network of :data:`ENCODERS` operators.
        bounds: sound bounds of every node on the input set, flat float64 arrays.
        label: the point's class.
        classes: the classes to beat, most dangerous first.
        time_limit: seconds for all of them.

    """
    deadline = time.perf_counter() + time_limit
    program, logits = encode(graph, bounds)
    n_in = bounds[0][0].shape[0]
    reasons = []
    for done, j in enumerate(classes):
        left = deadline - time.perf_counter()
        if left <= 0:
            reasons.append(f"class {j}: no time left")
            continue
        margin = logits.rows(np.array([label])) - logits.rows(np.array([j]))
        result = program.minimize(
            margin, time_limit=left / (len(classes) - done), cutoff=MARGIN_TOLERANCE
        )
        if result.x is not None and result.value is not None and result.value < 0:
            return Outcome("falsified", counterexample=np.asarray(result.x[:n_in]))
        reason = _undecided(result, j)
        if reason:
            reasons.append(reason)
    if reasons:
        return Outcome("unknown", "MILP: " + "; ".join(reasons))
    return Outcome("verified")


def _undecided(result: Minimum, j: int) -> str:
    """Why one class's solve proved nothing (``""`` when its margin is proved positive)."""
    if result.bound is not None and result.bound > MARGIN_TOLERANCE:
        return ""
    if result.status == 0:
        return (
            f"class {j}: the smallest margin {result.value:.3g} is within the solver's "
            f"tolerance {MARGIN_TOLERANCE:g} of zero"
        )
    if result.status == 1:
        found = "" if result.bound is None else f", its margin proved above {result.bound:.3g}"
        return f"class {j}: out of time before a counterexample or a proof{found}"
    return f"class {j}: HiGHS stopped with status {result.status} ({result.message})"
