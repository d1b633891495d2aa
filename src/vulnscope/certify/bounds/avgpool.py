"""``nn.AvgPool2d``: window means, a linear map with non-negative coefficients."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope.certify.bounds.affine import Affine

__all__ = ["AvgPool2d"]


class AvgPool2d(Affine):
    """Average pooling (its coefficients are non-negative, so ``|L| = L``)."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None,
        padding: int | tuple[int, int],
        *,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
    ) -> None:
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def linear(self, x: Tensor) -> Tensor:
        """The window means."""
        return functional.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def bias(self) -> Tensor:
        """Zero."""
        return torch.zeros(())

    def abs_linear(self, x: Tensor) -> Tensor:
        """The window means again."""
        return self.linear(x)
