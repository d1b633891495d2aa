"""Max pooling over non-overlapping windows, fast on CPU for small feature maps."""

from __future__ import annotations

from typing import Any

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


def _no_transform() -> bool:
    """True outside forward-mode AD (no dual level) and every ``torch.func`` transform."""
    return forward_ad._current_level < 0 and torch._C._functorch.peek_interpreter_stack() is None


def _values_only() -> bool:
    """True when no derivative of this forward pass can be asked for."""
    return not torch.is_grad_enabled() and _no_transform()


def _is_channels_last(x: Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last and not also plainly contiguous."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max pooling of a channels-last (N, C, H, W) tensor with a scattering backward pass.

    On CPU, PyTorch's pooling kernel is vectorised over the channels of a channels-last
    tensor (about ten times faster on 8x8 maps than on the plain layout), but its backward
    pass converts between layouts; this one scatters the incoming gradient to the
    maximum's position (the kernel's index: the first maximum, NaN first) straight into a
    channels-last gradient, the same values as the kernel's. The scatter is itself
    differentiable, so second derivatives (Hessian-vector products) go through it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int) -> Tensor:
        values, index = functional.max_pool2d_with_indices(x, (size, size))
        ctx.save_for_backward(index)
        ctx.input_shape = x.shape
        return values

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        n, channels, height, width = ctx.input_shape
        # (N, H, W, C) is a channels-last tensor's memory order: the result's permute is a
        # view, and so is the indices' (the kernel returns them channels-last).
        grad_input = grad.new_zeros((n, height, width, channels))
        positions = index.permute(0, 2, 3, 1).reshape(n, -1, channels)
        incoming = grad.permute(0, 2, 3, 1).reshape(n, -1, channels)
        grad_input.view(n, height * width, channels).scatter_(1, positions, incoming)
        return grad_input.view(n, height, width, channels).permute(0, 3, 1, 2), None


class WindowMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(size)`` (stride = size, no padding) with fast paths on small maps.

    When no derivative can be asked for (no grad mode, no forward-mode level, no
    ``torch.func`` transform) it computes :func:`window_maximum`, whose values are
    exactly max pooling's. Attacks spend most of their model evaluations in
    ``torch.no_grad()`` (the random search of Square, the success checks of every other
    attack): on the digits CNN this made the standard L2 evaluation 1.16x faster on 100
    digits (``benchmarks/digits_cnn_speed.py``). In grad mode, a channels-last input
    (as the convolutions of a channels-last network give) is pooled by PyTorch's
    vectorised channels-last kernel with a backward pass that scatters the gradient in
    that layout (:class:`_ChannelsLastMaxPool`). Otherwise, under forward-mode AD and
    ``torch.func``, and in TorchScript, it is ``nn.MaxPool2d``. Every path's gradients and
    tangents are max pooling's: they route to the first maximum of each window.

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
        size = int(self.kernel_size)  # type: ignore[arg-type]
        if _values_only():
            return window_maximum(input, size)
        if _is_channels_last(input) and _no_transform():
            return _ChannelsLastMaxPool.apply(input, size)  # type: ignore[no-any-return]
        return functional.max_pool2d(input, size)
