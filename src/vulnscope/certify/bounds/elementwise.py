"""Elementwise affine maps by constants: ``x * scale + shift`` (normalisation, ``x / 255``)."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope.certify.bounds.affine import Affine

__all__ = ["ScaleShift"]


class ScaleShift(Affine):
    """``x * scale + shift`` with constant tensors broadcast against one sample.

    Args:
        scale: broadcastable to the per-sample shape (e.g. ``(C, 1, 1)`` per channel).
        shift: broadcastable to the per-sample shape.

    """

    def __init__(self, scale: Tensor | float, shift: Tensor | float) -> None:
        self.scale = torch.as_tensor(scale).detach()
        self.shift = torch.as_tensor(shift).detach()

    def linear(self, x: Tensor) -> Tensor:
        """``x * scale``."""
        return x * self.scale.to(x.dtype)

    def bias(self) -> Tensor:
        """``shift``."""
        return self.shift

    def abs_linear(self, x: Tensor) -> Tensor:
        """``x * |scale|``."""
        return x * self.scale.abs().to(x.dtype)

    def transpose(self, coefficients: Tensor) -> Tensor:
        """``A * scale``, summed over the dimensions the scale was broadcast along."""
        scaled = coefficients * self.scale.to(coefficients.dtype)
        return _unbroadcast(scaled, coefficients.shape[0], self.input_shapes[0])


def _unbroadcast(value: Tensor, rows: int, shape: tuple[int, ...]) -> Tensor:
    """Sum ``value`` (rows, *broadcast) down to (rows, *shape)."""
    if tuple(value.shape[1:]) == shape:
        return value
    return value.sum_to_size((rows, *shape))
