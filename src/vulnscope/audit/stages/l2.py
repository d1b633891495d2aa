"""The audit's ``l2`` stage: robust accuracy under the standard cascade, L2 budgets."""

from __future__ import annotations

from vulnscope.audit.stage import register_stage
from vulnscope.audit.stages.robustness import RobustnessStage

__all__ = ["L2Stage"]


class L2Stage(RobustnessStage):
    """The cascade's curve at the L2 budgets (default 0.25, 0.5, 1 for inputs in [0, 1])."""

    name = "l2"
    description = "robust accuracy under the standard cascade, L2"
    section = ("robustness", "l2")
    norm = "l2"


register_stage(L2Stage())
