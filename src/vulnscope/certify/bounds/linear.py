"""``nn.Linear``: ``x W^T + b``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope.certify.bounds.affine import Affine

__all__ = ["Linear"]


class Linear(Affine):
    """A fully connected layer; reads the module's parameters when called (live)."""

    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def linear(self, x: Tensor) -> Tensor:
        """``x W^T``."""
        return functional.linear(x, self.module.weight.to(x.dtype))

    def bias(self) -> Tensor:
        """``b`` (zero without one)."""
        if self.module.bias is None:
            return torch.zeros((), dtype=self.module.weight.dtype)
        return self.module.bias

    def abs_linear(self, x: Tensor) -> Tensor:
        """``x |W|^T``."""
        return functional.linear(x, self.module.weight.to(x.dtype).abs())

    def transpose(self, coefficients: Tensor) -> Tensor:
        """``A W``."""
        return coefficients @ self.module.weight.to(coefficients.dtype)
