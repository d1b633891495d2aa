"""A convolution that runs its network's feature maps channels-last."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vulnscope.models.pooling import _no_transform

__all__ = ["ChannelsLastConv2d"]


def _channels_last(x: Tensor) -> Tensor:
    """``x`` (N, C, H, W) with channels-last strides, copied only if it lacks them.

    A one-channel tensor counts as laid out both ways, and ``contiguous`` leaves it
    alone; oneDNN then picks the plain layout, so it is cloned with explicit strides.
    """
    if x.shape[1] == 1:
        return torch.clone(x, memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


class ChannelsLastConv2d(nn.Conv2d):
    """``nn.Conv2d`` that lays a batched input out channels-last before convolving.

    On CPU, oneDNN convolves a channels-last input in that layout and returns a
    channels-last output, and elementwise layers keep it; small feature maps are then
    several times faster to convolve than in the plain (N, C, H, W) layout, and
    :class:`~vulnscope.models.pooling.WindowMaxPool2d` pools them by PyTorch's vectorised
    kernel. Used as the *first* convolution of a network, it puts every later one in that
    layout too, while the weights stay plain (contiguous), so state dicts save with
    safetensors and ``torch.export`` as usual. Values equal ``nn.Conv2d``'s up to
    floating-point rounding (the sums run in another order).

    Under ``torch.func`` transforms and forward-mode AD (where a channels-last clone is
    not supported) and for unbatched inputs it is plain ``nn.Conv2d``.

    Shape:
        input (N, C, H, W) or (C, H, W); output (N, C_out, H_out, W_out), channels-last
        when batched.

    """

    def forward(self, input: Tensor) -> Tensor:
        """The convolution of ``input``, laid out channels-last when batched."""
        if torch.jit.is_scripting():  # type: ignore[attr-defined]
            if input.dim() == 4:
                input = _channels_last(input)
            return self._conv_forward(input, self.weight, self.bias)  # type: ignore[no-any-return]
        return self._eager(input)

    @torch.jit.unused
    def _eager(self, input: Tensor) -> Tensor:
        if input.dim() == 4 and _no_transform():
            input = _channels_last(input)
        return self._conv_forward(input, self.weight, self.bias)  # type: ignore[no-any-return]
