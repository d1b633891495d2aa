"""Summaries of measured values: confidence intervals over seeds, JSON-ready numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Interval", "finite_median", "json_numbers", "mean_interval"]


@dataclass(frozen=True)
class Interval:
    """A sample mean and the half-width of its confidence interval.

    Attributes:
        mean: the mean of the finite values (NaN when there are none).
        half_width: Student-t half-width ``t_{(1+level)/2, n-1} · s / √n`` (NaN for n < 2).
        n: number of finite values used.
        level: confidence level.

    """

    mean: float
    half_width: float
    n: int
    level: float

    @property
    def low(self) -> float:
        """``mean - half_width``."""
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        """``mean + half_width``."""
        return self.mean + self.half_width

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready, with None for NaN."""
        return {
            "mean": _finite_or_none(self.mean),
            "ci_low": _finite_or_none(self.low),
            "ci_high": _finite_or_none(self.high),
            "half_width": _finite_or_none(self.half_width),
            "n": self.n,
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> Interval:
    """The mean of ``values`` with its Student-t confidence interval.

    Independent repetitions (one per seed) of a measurement with unknown spread: the
    interval ``mean ± t · s/√n`` covers the true mean with probability ``level`` when the
    values are normal, and approximately otherwise. Non-finite values are dropped.

    Example:
        >>> round(mean_interval([1.0, 2.0, 3.0]).half_width, 4)
        2.4841

    """
    from scipy.stats import t as student_t

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = [float(v) for v in values if math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, 0, level)
    mean = math.fsum(finite) / n
    if n < 2:
        return Interval(mean, math.nan, n, level)
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
    quantile = float(student_t.ppf((1 + level) / 2, n - 1))
    return Interval(mean, quantile * spread / math.sqrt(n), n, level)


def json_numbers(values: Tensor) -> list[Any]:
    """A JSON-ready nested list of ``values`` (any shape, ndim >= 1); inf and NaN as None."""
    return [
        json_numbers(row) if row.ndim else (float(row) if math.isfinite(float(row)) else None)
        for row in values.double().cpu()
    ]


def finite_median(values: Tensor) -> float | None:
    """The median of the finite entries of ``values`` (torch's lower median); None if none."""
    finite = values[torch.isfinite(values)].double()
    return float(finite.median()) if finite.numel() else None
