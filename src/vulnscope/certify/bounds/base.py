"""The interface every bounded operator implements, and the linear algebra they share.

A network is read into a graph of operators (:mod:`vulnscope.certify.graph`); each
operator knows three things about itself, after auto_LiRPA's ``bound_ops``:

- its value (:meth:`BoundOp.forward`);
- the interval its output lies in, given intervals of its inputs
  (:meth:`BoundOp.interval`: interval bound propagation, Gowal et al. 2018);
- how a linear lower bound ``A . output + c`` passes back to its inputs
  (:meth:`BoundOp.backward`: the backward linear relaxation of CROWN, Zhang et al. 2018),
  for which a nonlinear operator needs its inputs' intervals.

Adding a layer type is one class here, registered with the module types it reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoundOp", "Interval", "concretize", "linear_range", "lower_linear"]

Interval = tuple[Tensor, Tensor]
"""Lower and upper bounds of one node's output, each (B, *shape)."""


class BoundOp(ABC):
    """One operator of a network, with its interval and backward linear bounds.

    Every method takes and returns batched tensors: values and bounds (B, *shape) for the
    node's per-sample ``shape``; the coefficients of a backward bound (B, S, *shape) for
    ``S`` linear functions ("specifications") of each sample's output.
    """

    arity: int = 1
    """How many earlier nodes this operator reads."""

    input_shapes: tuple[tuple[int, ...], ...] = ()
    """Per-sample shapes of the inputs, set by the graph reader."""

    output_shape: tuple[int, ...] = ()
    """Per-sample shape of the output, set by the graph reader."""

    @abstractmethod
    def forward(self, *inputs: Tensor) -> Tensor:
        """The operator's value."""

    @abstractmethod
    def interval(self, *bounds: Interval) -> Interval:
        """Sound bounds of the output for inputs anywhere in their intervals."""

    @abstractmethod
    def backward(
        self,
        coefficients: Tensor,
        bounds: Sequence[Interval | None],
        *,
        mode: str,
        alpha: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Pass ``A . output >= ...`` back: coefficients on each input and a constant.

        Returns ``(A_inputs, c)`` with ``A . f(x) >= sum_i A_i . x_i + c`` for every
        ``x`` in the inputs' intervals (``bounds``, None where an operator needs none).

        Args:
            coefficients: A, (B, S, *out).
            bounds: intervals of the inputs (used by nonlinear operators only).
            mode: how a nonlinear operator chooses its lower slopes: ``"crown"``
                (adaptive, Zhang et al. 2018) or ``"dual"`` (the slope of the upper
                bound, Wong and Kolter 2018).
            alpha: lower slopes to use instead, (B, S, *in) (α-CROWN, Xu et al. 2021).

        Returns:
            one (B, S, *in_i) tensor per input, and c of shape (B, S).

        """

    def sensitive(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Where tighter input bounds would tighten this operator's relaxation.

        CROWN refines an intermediate node's bounds only where one of its readers is
        sensitive to them: everywhere by default; a ReLU only where it is unstable.

        Shape:
            lower, upper: (B, *in); returns a bool tensor of that shape.
        """
        return torch.ones_like(lower, dtype=torch.bool)

    @property
    def is_linear(self) -> bool:
        """True when the output is an affine function of the inputs (no relaxation)."""
        return False


def lower_linear(coefficients: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Min of ``A . x`` over the box ``lower <= x <= upper``, per sample and row.

    Shape:
        coefficients (B, S, *shape); lower, upper (B, *shape); returns (B, S).
    """
    return linear_range(coefficients, lower, upper)[0]


def linear_range(coefficients: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Min and max of ``A . x`` over the box: ``A . m -+ |A| . r`` (centre m, radius r).

    Shape:
        coefficients (B, S, *shape); lower, upper (B, *shape); returns two (B, S).
    """
    flat = coefficients.flatten(2)
    centre = ((upper + lower) / 2).flatten(1).unsqueeze(-1)
    radius = ((upper - lower) / 2).flatten(1).unsqueeze(-1)
    middle = torch.bmm(flat, centre).squeeze(-1)
    spread = torch.bmm(flat.abs(), radius).squeeze(-1)
    return middle - spread, middle + spread


def concretize(coefficients: Tensor, bounds: Interval) -> Tensor:
    """:func:`lower_linear` over an :data:`Interval`."""
    return lower_linear(coefficients, bounds[0], bounds[1])
