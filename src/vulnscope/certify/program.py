"""A mixed-integer linear program built one block of variables and constraints at a time.

The exact solvers of :mod:`vulnscope.certify.milp` and
:mod:`vulnscope.certify.exact_radius` keep each node of a network as affine functions of
the program's variables (:class:`Expression`), add variables and constraints as they
encode the nodes (:class:`Program`), and solve with HiGHS through
:func:`scipy.optimize.milp` (:class:`Minimum`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy.optimize import Bounds, LinearConstraint

__all__ = ["Array", "Expression", "Minimum", "Program"]

Array = np.ndarray


@dataclass(frozen=True)
class Expression:
    """``m`` affine functions ``coef @ v + const`` of the first ``k`` program variables ``v``.

    Attributes:
        coef: (m, k) float64.
        const: (m,) float64.

    """

    coef: Array
    const: Array

    def pad(self, k: int) -> Expression:
        """The same functions over the first ``k >= self.k`` variables."""
        extra = k - self.coef.shape[1]
        return Expression(np.pad(self.coef, ((0, 0), (0, extra))), self.const)

    def __add__(self, other: Expression) -> Expression:
        k = max(self.coef.shape[1], other.coef.shape[1])
        a, b = self.pad(k), other.pad(k)
        return Expression(a.coef + b.coef, a.const + b.const)

    def __sub__(self, other: Expression) -> Expression:
        return self + other.scale(-np.ones(other.const.shape[0]))

    def scale(self, factor: Array) -> Expression:
        """Row ``i`` times ``factor[i]``."""
        return Expression(self.coef * factor[:, None], self.const * factor)

    def affine(self, weight: Array, bias: Array) -> Expression:
        """``weight @ self + bias``: (out, m) and (out,)."""
        return Expression(weight @ self.coef, weight @ self.const + bias)

    def rows(self, index: Array) -> Expression:
        """The functions at ``index`` (an integer or boolean array)."""
        return Expression(self.coef[index], self.const[index])


class Program:
    """A mixed-integer linear program built one block of variables and constraints at a time."""

    def __init__(self) -> None:
        self._lower: list[Array] = []
        self._upper: list[Array] = []
        self._integral: list[Array] = []
        self._rows: list[tuple[Expression, Array, Array]] = []
        self._built: tuple[tuple[int, int], LinearConstraint, Bounds, Array] | None = None
        self.size = 0

    def variables(self, lower: Array, upper: Array, *, integral: bool = False) -> Expression:
        """New variables within ``[lower, upper]`` (m,), returned as ``m`` functions."""
        m = lower.shape[0]
        self._lower.append(np.asarray(lower, dtype=np.float64))
        self._upper.append(np.asarray(upper, dtype=np.float64))
        self._integral.append(np.full(m, int(integral)))
        coef = np.zeros((m, self.size + m))
        coef[:, self.size :] = np.eye(m)
        self.size += m
        return Expression(coef, np.zeros(m))

    def constrain(self, expression: Expression, lower: Array | float, upper: Array | float) -> None:
        """Require ``lower <= expression <= upper`` row by row."""
        m = expression.const.shape[0]
        self._rows.append((expression, np.broadcast_to(lower, m), np.broadcast_to(upper, m)))

    def minimize(
        self,
        objective: Expression,
        *,
        time_limit: float,
        cutoff: float | None = None,
        extra: Sequence[tuple[Expression, float, float]] = (),
    ) -> Minimum:
        """Minimise the single function ``objective`` within ``time_limit`` seconds (HiGHS).

        With a ``cutoff``, only the points where ``objective <= cutoff`` count: the
        branch and bound prunes every node whose relaxation stays above it, so proving
        that no such point exists (the program is then infeasible) is much faster than
        finding the minimum (ten times on the digits MLP of ``benchmarks/verify_milp.py``).
        ``extra`` constraints ``(expression, lower, upper)`` hold for this solve only.
        """
        # imported here: scipy.optimize takes half a second, paid by every process that
        # imports vulnscope.certify otherwise
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_array

        n = self.size
        if self._built is None or self._built[0] != (n, len(self._rows)):
            blocks = [e.pad(n) for e, _, _ in self._rows]
            const = np.concatenate([np.zeros(0)] + [b.const for b in blocks])
            constraint = LinearConstraint(
                csr_array(np.concatenate([np.zeros((0, n))] + [b.coef for b in blocks])),
                np.concatenate([np.zeros(0)] + [lo for _, lo, _ in self._rows]) - const,
                np.concatenate([np.zeros(0)] + [hi for _, _, hi in self._rows]) - const,
            )
            box = Bounds(np.concatenate(self._lower), np.concatenate(self._upper))
            self._built = ((n, len(self._rows)), constraint, box, np.concatenate(self._integral))
        _, constraint, box, integrality = self._built
        c = objective.pad(n).coef[0]
        constraints = [constraint]
        if cutoff is not None:
            extra = [*extra, (objective, -np.inf, cutoff)]
        for expression, low, high in extra:
            row = expression.pad(n)
            constraints.append(LinearConstraint(row.coef, low - row.const, high - row.const))
        result = milp(
            c,
            integrality=integrality,
            bounds=box,
            constraints=constraints,
            options={"time_limit": max(time_limit, 1e-3), "disp": False},
        )
        shift = float(objective.const[0])
        value = None if result.x is None else float(result.fun) + shift
        dual = result.get("mip_dual_bound")
        if result.status == 0:
            bound = value
        elif result.status == 2:
            bound = np.inf
        elif dual is not None and np.isfinite(dual):
            bound = float(dual) + shift
        else:
            bound = None
        return Minimum(int(result.status), value, bound, result.x, str(result.message))


@dataclass(frozen=True)
class Minimum:
    """What HiGHS found, in the objective's own units (its constant included).

    Attributes:
        status: scipy's code: 0 optimal, 1 a limit reached, 2 infeasible, 3 unbounded,
            4 another failure.
        value: the best objective value found (``None`` if no feasible point was).
        bound: a proved lower bound of the minimum (``inf`` when no point is feasible,
            with a cutoff: none at or below it; ``None`` when nothing was proved).
        x: the best point found, (n,) or ``None``.
        message: HiGHS's status message.

    """

    status: int
    value: float | None
    bound: float | None
    x: Array | None
    message: str
