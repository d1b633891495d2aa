"""The audit's ``l2`` stage: robust accuracy under the standard cascade, L2 budgets."""

from __future__ import annotations

from vulnscope.audit.stage import register_stage
from vulnscope.audit.stages.robustness import RobustnessStage

__all__ = ["L2Stage"]


class L2Stage(RobustnessStage):
    """The cascade's curve at the plan's L2 budgets (:mod:`vulnscope.audit.budgets`)."""

    name = "l2"
    description = "robust accuracy under the attack cascade, L2"
    section = ("robustness", "l2")
    norm = "l2"
    budget_norms = ("l2",)


register_stage(L2Stage())
