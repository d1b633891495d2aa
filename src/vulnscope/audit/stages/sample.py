"""What the stages that run once on the geometry sample share.

Spectra, amplification, the dangerous perturbation and the RG analysis each compute one
piece, on the seeded sample of the data (:attr:`AuditPlan.sample`), and that piece is
their result. They draw their figures as they compute (the figures need the tensors the
result leaves out), so a resumed audit finds them on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from typing_extensions import override

from vulnscope.audit.stage import AuditPlan, Stage

__all__ = ["SampleStage"]

R = TypeVar("R")


class SampleStage(Stage[R, R]):
    """A stage whose one piece, computed on the geometry sample, is its result.

    Attributes:
        figure_files: the figures it draws while it computes, ``{key: file name}``.

    """

    tolerant = True
    figure_files: ClassVar[Mapping[str, str]] = {}

    @override
    def merge(self, pieces: Sequence[R], plan: AuditPlan, results: Mapping[str, Any]) -> R:
        return pieces[0]

    @override
    def figures(
        self, result: R, plan: AuditPlan, results: Mapping[str, Any], clean_accuracy: float
    ) -> dict[str, str]:
        """The figures it drew, those that are on disk."""
        directory = plan.directory
        if directory is None:
            return {}
        return {
            key: name for key, name in self.figure_files.items() if (directory / name).is_file()
        }
