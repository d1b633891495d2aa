"""Side-by-side timing shared by the benchmark scripts: rotating rounds, paired ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed_rounds(
    contenders: dict[str, Callable[[], object]],
    rounds: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time every contender once per round, in an order that rotates from round to round.

    Ratios are then taken within a round, so that the machine's drifting load and the
    position in the round cancel out. ``clock``: the wall clock by default;
    ``time.process_time`` counts the CPU time of the process instead.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = clock()
            contenders[name]()
            times[name].append(clock() - start)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over the rounds of ``timed_rounds`` of the time ratio, paired within each round."""
    return statistics.median(
        a / b for a, b in zip(times[numerator], times[denominator], strict=True)
    )
