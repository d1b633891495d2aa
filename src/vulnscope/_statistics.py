"""Confidence intervals of a mean over independent repetitions (seeds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "mean_interval"]


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
