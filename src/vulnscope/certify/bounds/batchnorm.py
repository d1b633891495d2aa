"""Batch normalisation in eval mode: a per-channel scale and shift."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from vulnscope.certify.bounds.affine import Affine

__all__ = ["BatchNorm"]


class BatchNorm(Affine):
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel.

    Only the eval-mode function has a certificate: in training mode the output depends on
    the rest of the batch. The graph reader refuses a module in training mode.
    """

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.module = module

    def _shape(self) -> tuple[int, ...]:
        return (-1,) + (1,) * (len(self.input_shapes[0]) - 1)

    def _scale(self) -> Tensor:
        m = self.module
        if m.running_var is None or m.running_mean is None:
            raise RuntimeError("batch norm without running statistics")
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return scale.view(self._shape())

    def linear(self, x: Tensor) -> Tensor:
        """The scale."""
        return x * self._scale().to(x.dtype)

    def bias(self) -> Tensor:
        """The shift."""
        m = self.module
        scale = self._scale()
        shift = -cast(Tensor, m.running_mean).view(self._shape()) * scale
        if m.bias is not None:
            shift = shift + m.bias.view(self._shape())
        return shift

    def abs_linear(self, x: Tensor) -> Tensor:
        """The absolute scale."""
        return x * self._scale().abs().to(x.dtype)

    def transpose(self, coefficients: Tensor) -> Tensor:
        """The scale again (a diagonal map)."""
        return coefficients * self._scale().to(coefficients.dtype)
