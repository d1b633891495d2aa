r"""Elementwise activations and their linear relaxations.

For an increasing activation ``f`` on ``[l, u]`` and any slope ``a``, the lines

.. math:: a x + \min_{[l, u]} (f - a x) \;\le\; f(x) \;\le\; a x + \max_{[l, u]} (f - a x)

are sound, and the extremes of ``f(x) - a x`` lie at ``l``, ``u``, ``f``'s kinks or where
``f'(x) = a``. Each activation lists those points in closed form, so every slope
(CROWN's adaptive one, the dual's, or an optimised α) gets the tightest offset for it:
the upper line uses the chord's slope (for a convex piece, the chord itself), the lower
one the slope its mode asks for. This is the relaxation of Zhang et al. (2018), "Efficient
neural network robustness certification with general activation functions", for ReLU,
LeakyReLU, ELU, Tanh and Sigmoid.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from vulnscope.certify.bounds.base import BoundOp, Interval

__all__ = ["ELU", "Activation", "LeakyReLU", "ReLU", "Sigmoid", "Tanh"]

_DEGENERATE = 1e-12
"""Intervals narrower than this get constant bounds ``[f(l), f(u)]``."""


class Activation(BoundOp):
    """An increasing elementwise function with a sound relaxation for any slope."""

    kinks: tuple[float, ...] = ()
    """Points where the derivative jumps."""

    @abstractmethod
    def function(self, x: Tensor) -> Tensor:
        """The activation."""

    def critical_points(self, slope: Tensor) -> list[Tensor]:
        """Points ``x`` with ``f'(x) = slope`` (NaN where there is none); none by default."""
        return []

    def adaptive_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        """CROWN's lower slope; by default the chord's."""
        return chord_slope(self, lower, upper)

    def exact(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Where the activation is linear on ``[l, u]`` (α leaves those slopes alone)."""
        return (upper - lower) <= _DEGENERATE

    def slope_range(self) -> tuple[float, float]:
        """Lower slopes worth optimising (every slope is sound; α-CROWN clamps to these)."""
        return 0.0, 1.0

    def forward(self, *inputs: Tensor) -> Tensor:
        """``f(x)``."""
        return self.function(inputs[0])

    def interval(self, *bounds: Interval) -> Interval:
        """``[f(l), f(u)]`` (the activation is increasing)."""
        lower, upper = bounds[0]
        return self.function(lower), self.function(upper)

    def lower_slope(self, lower: Tensor, upper: Tensor, mode: str) -> Tensor:
        """The slope of the lower line: CROWN's adaptive one, or the chord's for the dual."""
        if mode == "dual":
            return chord_slope(self, lower, upper)
        return self.adaptive_slope(lower, upper)

    def offset(self, slope: Tensor, lower: Tensor, upper: Tensor, *, largest: bool) -> Tensor:
        """``min`` (or ``max``) of ``f(x) - slope x`` over ``[lower, upper]``."""
        lower, upper = torch.broadcast_tensors(lower, upper, slope)[:2]
        candidates = [lower, upper]
        candidates += [torch.full_like(lower, kink) for kink in self.kinks]
        candidates += self.critical_points(slope.expand_as(lower))
        best = self.function(lower) - slope * lower
        for point in candidates[1:]:
            # a point outside [l, u] (or NaN: none) is replaced by l, already counted
            point = torch.where((point >= lower) & (point <= upper), point, lower)
            value = self.function(point) - slope * point
            best = torch.maximum(best, value) if largest else torch.minimum(best, value)
        return best

    def relaxation(
        self, lower: Tensor, upper: Tensor, mode: str, alpha: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Lines ``a_l x + b_l <= f(x) <= a_u x + b_u`` on ``[lower, upper]``.

        Returns:
            ``(a_l, b_l, a_u, b_u)``, each of the bounds' shape (or of ``alpha``'s).

        """
        narrow = (upper - lower) <= _DEGENERATE
        upper_slope = torch.where(narrow, 0.0, chord_slope(self, lower, upper))
        low_slope = self.lower_slope(lower, upper, mode)
        if alpha is not None:
            low_slope = torch.where(self.exact(lower, upper), low_slope, alpha)
        low_slope = torch.where(narrow, 0.0, low_slope)
        low_offset = self.offset(low_slope, lower, upper, largest=False)
        high_offset = self.offset(upper_slope, lower, upper, largest=True)
        return low_slope, low_offset, upper_slope, high_offset

    def backward(
        self,
        coefficients: Tensor,
        bounds: Sequence[Interval | None],
        *,
        mode: str,
        alpha: Tensor | None = None,
    ) -> tuple[list[Tensor], Tensor]:
        """Positive coefficients take the lower line, negative ones the upper line."""
        interval = bounds[0]
        if interval is None:
            raise RuntimeError("an activation needs its input's bounds")
        lower, upper = interval[0].unsqueeze(1), interval[1].unsqueeze(1)
        low_slope, low_offset, upper_slope, high_offset = self.relaxation(lower, upper, mode, alpha)
        positive = coefficients.clamp(min=0)
        negative = coefficients - positive
        passed = positive * low_slope + negative * upper_slope
        constant = _dot(positive, low_offset) + _dot(negative, high_offset)
        return [passed], constant


def _dot(coefficients: Tensor, offsets: Tensor) -> Tensor:
    """``sum A * c`` per row: (B, S) for A (B, S, *shape) and c (B, 1 or S, *shape)."""
    flat = coefficients.flatten(2)
    if offsets.shape[1] == 1:
        column = offsets.reshape(offsets.shape[0], -1, 1).to(flat.dtype)
        return torch.bmm(flat, column).squeeze(-1)
    return (flat * offsets.flatten(2)).sum(-1)


def chord_slope(activation: Activation, lower: Tensor, upper: Tensor) -> Tensor:
    """``(f(u) - f(l)) / (u - l)``, 0 on intervals narrower than ``1e-12``."""
    width = upper - lower
    narrow = width <= _DEGENERATE
    rise = activation.function(upper) - activation.function(lower)
    return torch.where(narrow, 0.0, rise / torch.where(narrow, 1.0, width))


class ReLU(Activation):
    """``max(x, 0)``; CROWN's lower slope is 1 where ``u >= -l``, else 0."""

    kinks = (0.0,)

    def function(self, x: Tensor) -> Tensor:
        """``max(x, 0)``."""
        return torch.relu(x)

    def adaptive_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        """1 for stable-active and mostly-positive neurons, else 0."""
        return (upper >= -lower).to(lower.dtype)

    def exact(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Stable neurons: ``l >= 0`` or ``u <= 0``."""
        return (lower >= 0) | (upper <= 0)

    def sensitive(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Unstable neurons (a stable one is exact whatever its bounds)."""
        return ~self.exact(lower, upper)


class LeakyReLU(Activation):
    """``max(x, s x)`` for a slope ``0 <= s <= 1``."""

    kinks = (0.0,)

    def __init__(self, negative_slope: float) -> None:
        self.negative_slope = negative_slope

    def function(self, x: Tensor) -> Tensor:
        """``x`` for ``x >= 0``, else ``s x``."""
        return torch.nn.functional.leaky_relu(x, self.negative_slope)

    def adaptive_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        """1 where ``u >= -l``, else the negative slope."""
        return torch.where(upper >= -lower, 1.0, self.negative_slope).to(lower.dtype)

    def exact(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Stable neurons: ``l >= 0`` or ``u <= 0``."""
        return (lower >= 0) | (upper <= 0)

    def sensitive(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Unstable neurons (a stable one is exact whatever its bounds)."""
        return ~self.exact(lower, upper)

    def slope_range(self) -> tuple[float, float]:
        """Between the negative slope and 1."""
        return self.negative_slope, 1.0


class ELU(Activation):
    """``x`` for ``x > 0``, ``a (exp(x) - 1)`` otherwise (Clevert et al. 2016)."""

    kinks = (0.0,)

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def slope_range(self) -> tuple[float, float]:
        """Between 0 and the largest derivative, ``max(1, a)``."""
        return 0.0, max(1.0, self.alpha)

    def function(self, x: Tensor) -> Tensor:
        """The ELU."""
        return torch.nn.functional.elu(x, self.alpha)

    def critical_points(self, slope: Tensor) -> list[Tensor]:
        """``log(slope / a)`` where that is negative."""
        ratio = slope / self.alpha
        point = torch.log(torch.where(ratio > 0, ratio, 1.0))
        return [torch.where((ratio > 0) & (point < 0), point, float("nan"))]


class Tanh(Activation):
    """The hyperbolic tangent; ``f'(x) = 1 - tanh(x)^2``."""

    def function(self, x: Tensor) -> Tensor:
        """``tanh(x)``."""
        return torch.tanh(x)

    def critical_points(self, slope: Tensor) -> list[Tensor]:
        """``+- atanh(sqrt(1 - slope))`` for ``0 < slope <= 1``."""
        valid = (slope > 0) & (slope <= 1)
        root = torch.sqrt(torch.where(valid, 1 - slope, 0.5).clamp(min=1e-12)).clamp(max=1 - 1e-7)
        point = torch.atanh(root)
        return [torch.where(valid, point, float("nan")), torch.where(valid, -point, float("nan"))]


class Sigmoid(Activation):
    """The logistic function; ``f'(x) = s (1 - s)``."""

    def slope_range(self) -> tuple[float, float]:
        """Between 0 and the largest derivative, 1/4."""
        return 0.0, 0.25

    def function(self, x: Tensor) -> Tensor:
        """``1 / (1 + exp(-x))``."""
        return torch.sigmoid(x)

    def critical_points(self, slope: Tensor) -> list[Tensor]:
        """``logit((1 +- sqrt(1 - 4 slope)) / 2)`` for ``0 < slope <= 1/4``."""
        valid = (slope > 0) & (slope <= 0.25)
        root = torch.sqrt(torch.where(valid, 1 - 4 * slope, 0.5).clamp(min=1e-12))
        high = ((1 + root) / 2).clamp(1e-7, 1 - 1e-7)
        point = torch.log(high / (1 - high))
        return [torch.where(valid, point, float("nan")), torch.where(valid, -point, float("nan"))]
