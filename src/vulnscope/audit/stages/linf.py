"""The audit's ``linf`` stage: robust accuracy under the standard cascade, L∞ budgets."""

from __future__ import annotations

from vulnscope.audit.stage import register_stage
from vulnscope.audit.stages.robustness import RobustnessStage

__all__ = ["LinfStage"]


class LinfStage(RobustnessStage):
    """The cascade's curve at the plan's L∞ budgets (:mod:`vulnscope.audit.budgets`)."""

    name = "linf"
    description = "robust accuracy under the attack cascade, L∞"
    section = ("robustness", "linf")
    norm = "linf"
    budget_norms = ("linf",)


register_stage(LinfStage())
