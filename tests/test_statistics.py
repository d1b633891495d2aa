from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vulnscope._statistics import mean_interval


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12))
def test_the_interval_matches_scipys_t_interval(values: list[float]) -> None:
    interval = mean_interval(values)
    spread = stats.sem(values)
    assert interval.mean == pytest.approx(sum(values) / len(values), abs=1e-9)
    if spread == 0:
        assert interval.half_width == pytest.approx(0.0, abs=1e-9)
        return
    low, high = stats.t.interval(0.95, len(values) - 1, loc=interval.mean, scale=spread)
    assert interval.low == pytest.approx(low, rel=1e-7, abs=1e-9)
    assert interval.high == pytest.approx(high, rel=1e-7, abs=1e-9)


def test_five_seed_intervals_cover_the_true_mean_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    trials = 4000
    covered = 0
    for _ in range(trials):
        interval = mean_interval([rng.gauss(3.0, 2.0) for _ in range(5)])
        covered += interval.low <= 3.0 <= interval.high
    assert covered / trials == pytest.approx(0.95, abs=0.015)


def test_degenerate_inputs() -> None:
    assert math.isnan(mean_interval([]).mean)
    one = mean_interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.half_width)
    assert one.to_dict()["half_width"] is None
    assert mean_interval([1.0, float("nan"), 3.0]).n == 2
    with pytest.raises(ValueError, match="level must be in"):
        mean_interval([1.0, 2.0], level=1.5)
