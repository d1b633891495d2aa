"""Affine operators: ``f(x) = L(x) + b`` for a linear map ``L``, bounded exactly."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from vulnscope.certify.bounds.base import BoundOp, Interval

__all__ = ["Affine"]


class Affine(BoundOp):
    """An operator affine in its one input: a linear map :meth:`linear` plus :meth:`bias`.

    Its interval is exact (centre and radius: ``f(m) +- |L|(r)``) and its backward bound
    needs no relaxation: ``A . f(x) = L^T(A) . x + A . b``. A subclass gives the linear
    map, its bias, the map with every coefficient replaced by its absolute value and,
    where it knows a faster one than autograd's, the transpose.
    """

    @abstractmethod
    def linear(self, x: Tensor) -> Tensor:
        """The linear part ``L(x)``, batched: (M, *in) to (M, *out), in ``x``'s dtype."""

    @abstractmethod
    def bias(self) -> Tensor:
        """The constant part ``b``, broadcastable to the per-sample output shape."""

    @abstractmethod
    def abs_linear(self, x: Tensor) -> Tensor:
        """``|L|(x)``: the linear map with the absolute values of its coefficients."""

    def transpose(self, coefficients: Tensor) -> Tensor:
        """``L^T(A)`` for A (M, *out), by autograd's vector-Jacobian product: (M, *in)."""
        zeros = coefficients.new_zeros((coefficients.shape[0], *self.input_shapes[0]))
        pullback = torch.func.vjp(self.linear, zeros)[1]
        result: Tensor = pullback(coefficients)[0]
        return result

    @property
    def is_linear(self) -> bool:
        """Affine operators need no relaxation."""
        return True

    def forward(self, *inputs: Tensor) -> Tensor:
        """``L(x) + b``."""
        return self.linear(inputs[0]) + self.bias().to(inputs[0].dtype)

    def interval(self, *bounds: Interval) -> Interval:
        """Exact bounds ``f(m) -+ |L|(r)`` for the centre m and radius r of the box."""
        lower, upper = bounds[0]
        centre = self.forward((upper + lower) / 2)
        radius = self.abs_linear((upper - lower) / 2)
        return centre - radius, centre + radius

    def backward(
        self,
        coefficients: Tensor,
        bounds: Sequence[Interval | None],
        *,
        mode: str,
        alpha: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """``A . f(x) = L^T(A) . x + A . b`` (exact)."""
        if coefficients.shape[0] > 1 and coefficients.stride(0) == 0:
            # the same rows for every sample (unit rows of an intermediate node): pass back once
            (once,), constant = self.backward(coefficients[:1], bounds, mode=mode)
            count = coefficients.shape[0]
            return [once.expand(count, *once.shape[1:])], constant.expand(count, -1)
        batch, specs = coefficients.shape[:2]
        flat = coefficients.reshape(batch * specs, *coefficients.shape[2:])
        passed = self.transpose(flat).reshape(batch, specs, *self.input_shapes[0])
        bias = self.bias().to(coefficients.dtype)
        constant = (
            (coefficients * bias).flatten(2).sum(-1)
            if bias.dim()
            else (coefficients.flatten(2).sum(-1) * bias)
        )
        return [passed], constant

    def matrix(self) -> tuple[Tensor, Tensor]:
        """The map as a dense float64 matrix on flattened samples, and its bias.

        Returns:
            W of shape (out, in) and b of shape (out,), with ``f(x) = W x + b`` for the
            flattened per-sample input and output. For the small networks an exact solver
            can handle.

        """
        size = math.prod(self.input_shapes[0])
        with torch.no_grad():
            basis = torch.eye(size, dtype=torch.float64).reshape(size, *self.input_shapes[0])
            columns = self.linear(basis).reshape(size, -1)
            bias = self.bias().to(torch.float64).expand(self.output_shape).reshape(-1)
        return columns.T.contiguous(), bias.clone()
