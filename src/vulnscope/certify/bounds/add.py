"""The sum of two nodes (a residual connection)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vulnscope.certify.bounds.base import BoundOp, Interval

__all__ = ["Add"]


class Add(BoundOp):
    """``x + y`` for two earlier nodes of one shape; linear, so passed back exactly."""

    arity = 2

    @property
    def is_linear(self) -> bool:
        """A sum needs no relaxation."""
        return True

    def forward(self, *inputs: Tensor) -> Tensor:
        """``x + y``."""
        return inputs[0] + inputs[1]

    def interval(self, *bounds: Interval) -> Interval:
        """``[l_x + l_y, u_x + u_y]``."""
        return bounds[0][0] + bounds[1][0], bounds[0][1] + bounds[1][1]

    def backward(
        self,
        coefficients: Tensor,
        bounds: Sequence[Interval | None],
        *,
        mode: str,
        alpha: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """The same coefficients on both inputs."""
        zero = coefficients.new_zeros(coefficients.shape[:2])
        batch, specs = coefficients.shape[:2]
        first = coefficients.reshape(batch, specs, *self.input_shapes[0])
        second = coefficients.reshape(batch, specs, *self.input_shapes[1])
        return [first, second], zero
