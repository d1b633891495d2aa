"""``nn.MaxPool2d`` and vulnscope's window max-pool: a sound linear relaxation of a max."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope.certify.bounds.base import BoundOp, Interval

__all__ = ["MaxPool2d"]


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


class MaxPool2d(BoundOp):
    r"""The maximum of each window, relaxed as in Zhang et al. (2018) and Boopathy et al.

    For a window ``W`` with input bounds ``[l_j, u_j]`` and ``k`` its element of largest
    lower bound, ``y = max_{j in W} x_j`` satisfies

    .. math:: x_k \le y \le \max_{j \in W} u_j,

    and ``y = x_k`` exactly when ``l_k >= u_j`` for every other ``j`` (the window has a
    sure winner). The interval is exact: ``[max l, max u]``. Windows (dilation 1) may
    overlap; padding never wins (it is ``-inf``).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None,
        padding: int | tuple[int, int],
    ) -> None:
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(stride)
        self.padding = _pair(padding)

    def forward(self, *inputs: Tensor) -> Tensor:
        """The window maxima."""
        return functional.max_pool2d(inputs[0], self.kernel_size, self.stride, self.padding)

    def interval(self, *bounds: Interval) -> Interval:
        """``[max of lower bounds, max of upper bounds]`` per window (exact)."""
        lower, upper = bounds[0]
        return self.forward(lower), self.forward(upper)

    def _windows(self, x: Tensor, fill: float) -> Tensor:
        """Each window's values, (B, C, L, K) for L windows of K elements (strided views)."""
        pad_h, pad_w = self.padding
        if pad_h or pad_w:
            x = functional.pad(x, (pad_w, pad_w, pad_h, pad_h), value=fill)
        (kernel_h, kernel_w), (stride_h, stride_w) = self.kernel_size, self.stride
        windows = x.unfold(2, kernel_h, stride_h).unfold(3, kernel_w, stride_w)
        return windows.reshape(*x.shape[:2], -1, kernel_h * kernel_w)

    def _sure(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per window: its winner (index into the window), whether it is sure, ``max u``."""
        windows_low = self._windows(lower, float("-inf"))
        windows_high = self._windows(upper, float("-inf"))
        winner = windows_low.argmax(dim=3, keepdim=True)  # (B, C, L, 1)
        winner_low = windows_low.gather(3, winner).squeeze(3)
        others = windows_high.scatter(3, winner, float("-inf")).amax(dim=3)
        return winner, winner_low >= others, windows_high.amax(dim=3)

    def sensitive(self, lower: Tensor, upper: Tensor) -> Tensor:
        """The elements of windows without a sure winner."""
        _, sure, _ = self._sure(lower, upper)
        height, width = self.input_shapes[0][1:]
        positions = torch.arange(height * width, device=lower.device, dtype=lower.dtype)
        members = self._windows(positions.view(1, 1, height, width), -1.0)[0, 0].long()
        unsure = (~sure).to(lower.dtype).unsqueeze(-1).expand(-1, -1, -1, members.shape[1])
        count = lower.new_zeros(*lower.shape[:2], height * width + 1)
        index = (members + 1).flatten().expand(*lower.shape[:2], -1)  # padding goes to 0
        count.scatter_add_(2, index, unsure.flatten(2))
        return (count[..., 1:] > 0).view_as(lower)

    def backward(
        self,
        coefficients: Tensor,
        bounds: Sequence[Interval | None],
        *,
        mode: str,
        alpha: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Positive coefficients go to each window's winner, negative ones to ``max u``."""
        interval = bounds[0]
        if interval is None:
            raise RuntimeError("max pooling needs its input's bounds")
        lower, upper = interval
        height, width = self.input_shapes[0][1:]
        winner, sure, top = self._sure(lower, upper)
        positions = torch.arange(height * width, dtype=lower.dtype, device=lower.device)
        window_positions = self._windows(positions.view(1, 1, height, width), -1.0)[0, 0]
        index = window_positions.expand(*winner.shape[:2], -1, -1).gather(3, winner)
        index = index.squeeze(3).long()  # (B, C, L): flat input position of each winner
        batch, specs = coefficients.shape[:2]
        channels = coefficients.shape[2]
        flat = coefficients.reshape(batch, specs, channels, -1)
        to_winner = torch.where(sure.unsqueeze(1), flat, flat.clamp(min=0))
        to_constant = flat - to_winner  # the negative coefficients of unsure windows
        constant = (to_constant * top.unsqueeze(1)).flatten(2).sum(-1)
        passed = flat.new_zeros(batch, specs, channels, height * width)
        passed.scatter_add_(3, index.unsqueeze(1).expand(-1, specs, -1, -1), to_winner)
        return [passed.reshape(batch, specs, channels, height, width)], constant
