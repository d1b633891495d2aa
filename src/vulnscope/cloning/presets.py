"""How much of the cloning study ``vulnscope clone`` runs: the default and the quick pass.

:func:`vulnscope.cloning.job.run_clone` reads the budgets, repetitions and training
epochs it is not given from one of these; the command line shows them in its help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vulnscope._validation import check_bool

__all__ = ["DEFAULT_SIZE", "QUICK", "StudySize", "study_size"]


@dataclass(frozen=True)
class StudySize:
    """The size of the study's grid.

    Attributes:
        budgets: mean L1 budgets of the budgeted defences.
        seeds: repetitions of every cell (intervals need at least 2).
        epochs: training epochs of each clone.

    """

    budgets: tuple[float, ...]
    seeds: int
    epochs: int


DEFAULT_SIZE = StudySize(budgets=(0.1, 0.25, 0.5, 1.0), seeds=5, epochs=30)
"""The study as the README reports it."""

QUICK = StudySize(budgets=(0.25, 1.0), seeds=2, epochs=10)
"""A fast pass (``run_clone(quick=True)``, ``vulnscope clone --quick``): two budgets far
apart, the fewest seeds that still give an interval, and short training."""


def study_size(
    *,
    budgets: Sequence[float] | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
) -> StudySize:
    """The values given, the others from :data:`QUICK` (``quick``) or :data:`DEFAULT_SIZE`.

    Unchecked: :func:`~vulnscope.cloning.job.run_clone` checks what it runs.

    Example:
        >>> study_size(seeds=3, quick=True)
        StudySize(budgets=(0.25, 1.0), seeds=3, epochs=10)

    """
    preset = QUICK if check_bool(quick, "quick") else DEFAULT_SIZE
    return StudySize(
        budgets=preset.budgets if budgets is None else tuple(budgets),
        seeds=preset.seeds if seeds is None else seeds,
        epochs=preset.epochs if epochs is None else epochs,
    )
