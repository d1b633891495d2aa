"""Max pooling over non-overlapping windows, fast where only its values are needed."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn
from torch.nn import functional

from vulnscope._validation import check_int

__all__ = ["WindowMaxPool2d", "window_maximum"]


def window_maximum(x: Tensor, size: int) -> Tensor:
    """The maximum of each ``size x size`` window of a tiling of ``x``'s last two dims.

    Equal to ``functional.max_pool2d(x, size)`` (windows that do not fit are dropped, NaN
    propagates), computed in two passes of :func:`torch.maximum` over strided views: the
    maximum of each run of ``size`` columns, then of each run of ``size`` rows of that
    (``2 (size - 1)`` operations rather than ``size**2 - 1``). On CPU it is several times
    faster than PyTorch's pooling kernel for small feature maps; its gradient differs at
    ties (``torch.maximum`` splits it), so it is for values only.

    Shape:
        x: (..., H, W); returns (..., H // size, W // size).
    """
    height, width = (x.shape[-2] // size) * size, (x.shape[-1] // size) * size
    across = x[..., :height, 0:width:size]
    for col in range(1, size):
        across = torch.maximum(across, x[..., :height, col:width:size])
    result = across[..., 0::size, :]
    for row in range(1, size):
        result = torch.maximum(result, across[..., row::size, :])
    return result


def _values_only() -> bool:
    """True when no derivative of this forward pass can be asked for."""
    return (
        not torch.is_grad_enabled()
        and forward_ad._current_level < 0  # no dual level: no forward-mode tangent
        and torch._C._functorch.peek_interpreter_stack() is None  # no torch.func transform
    )


class WindowMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(size)`` (stride = size, no padding) with a fast value-only path.

    When no derivative can be asked for (no grad mode, no forward-mode level, no
    ``torch.func`` transform) it computes :func:`window_maximum`, whose values are
    exactly max pooling's; otherwise, and in TorchScript, it is ``nn.MaxPool2d``, so
    gradients and tangents route to the first maximum of each window as ever. Attacks
    spend most of their model evaluations in ``torch.no_grad()`` (the random search of
    Square, the success checks of every other attack): on the digits CNN this makes the
    standard L2 evaluation 1.16x faster on 100 digits (``benchmarks/digits_cnn_speed.py``).

    Args:
        size: side of the square windows, and their stride.

    Shape:
        input (N, C, H, W) or (C, H, W); output (..., H // size, W // size).

    """

    def __init__(self, size: int) -> None:
        super().__init__(check_int(size, "size"))

    def forward(self, input: Tensor) -> Tensor:
        """Max pooling of ``input``; by :func:`window_maximum` when only values count."""
        if torch.jit.is_scripting():  # type: ignore[attr-defined]
            return functional.max_pool2d(input, self.kernel_size)
        return self._eager(input)

    @torch.jit.unused
    def _eager(self, input: Tensor) -> Tensor:
        if _values_only():
            return window_maximum(input, int(self.kernel_size))  # type: ignore[arg-type]
        return functional.max_pool2d(input, self.kernel_size)
