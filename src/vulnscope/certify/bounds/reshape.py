"""Reshapes (``nn.Flatten``, ``view``, ``reshape``, ``flatten``): a permutation-free relabelling."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope.certify.bounds.affine import Affine

__all__ = ["Reshape"]


class Reshape(Affine):
    """Each sample's values read in another per-sample shape (:attr:`output_shape`)."""

    def linear(self, x: Tensor) -> Tensor:
        """``x`` reshaped to (M, *out)."""
        return x.reshape(x.shape[0], *self.output_shape)

    def bias(self) -> Tensor:
        """Zero."""
        return torch.zeros(())

    def abs_linear(self, x: Tensor) -> Tensor:
        """The reshape itself (its coefficients are 0 and 1)."""
        return self.linear(x)

    def transpose(self, coefficients: Tensor) -> Tensor:
        """``A`` reshaped back to (M, *in)."""
        return coefficients.reshape(coefficients.shape[0], *self.input_shapes[0])
