"""The audit's ``linf`` stage: robust accuracy under the standard cascade, L∞ budgets."""

from __future__ import annotations

from vulnscope.audit.stage import register_stage
from vulnscope.audit.stages.robustness import RobustnessStage

__all__ = ["LinfStage"]


class LinfStage(RobustnessStage):
    """The cascade's curve at the L∞ budgets (default 0.05, 0.1, 0.2 for inputs in [0, 1])."""

    name = "linf"
    description = "robust accuracy under the standard cascade, L∞"
    section = ("robustness", "linf")
    norm = "linf"


register_stage(LinfStage())
