"""``nn.Conv2d`` (and vulnscope's channels-last variant): a convolution."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope.certify.bounds.affine import Affine

__all__ = ["Conv2d"]


class Conv2d(Affine):
    """A 2-D convolution with zero padding; its transpose is a transposed convolution."""

    def __init__(self, module: nn.Conv2d) -> None:
        self.module = module

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        m = self.module
        return functional.conv2d(
            x,
            weight.to(x.dtype),
            None,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
        )

    def linear(self, x: Tensor) -> Tensor:
        """The convolution without bias."""
        return self._conv(x, self.module.weight)

    def bias(self) -> Tensor:
        """The bias per channel, shape (C_out, 1, 1) (zero without one)."""
        if self.module.bias is None:
            return torch.zeros((), dtype=self.module.weight.dtype)
        return self.module.bias.view(-1, 1, 1)

    def abs_linear(self, x: Tensor) -> Tensor:
        """The convolution by ``|W|``."""
        return self._conv(x, self.module.weight.abs())

    def transpose(self, coefficients: Tensor) -> Tensor:
        """The transposed convolution of A back to the input's shape."""
        m = self.module
        if isinstance(m.padding, str):
            return super().transpose(coefficients)
        extra = []
        for axis in range(2):
            size_in = self.input_shapes[0][1 + axis]
            size_out = self.output_shape[1 + axis]
            reach = (size_out - 1) * m.stride[axis] - 2 * m.padding[axis]
            reach += m.dilation[axis] * (m.kernel_size[axis] - 1) + 1
            extra.append(size_in - reach)
        return functional.conv_transpose2d(
            coefficients,
            m.weight.to(coefficients.dtype),
            None,
            m.stride,
            m.padding,
            tuple(extra),
            m.groups,
            m.dilation,
        )
