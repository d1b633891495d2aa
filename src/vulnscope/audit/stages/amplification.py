"""The audit's ``amplification`` stage: how a small perturbation grows block by block.

On the geometry sample, each block's largest local singular value and the growth of a
small step along the Fisher's top eigenvector v₁ against a random one, through the
model's top-level blocks (:func:`vulnscope.diagnostics.layers.layer_amplification`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, ClassVar

from torch import Tensor, nn
from typing_extensions import override

from vulnscope.audit.codec import from_json
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.diagnostics.layers import default_blocks, layer_amplification
from vulnscope.diagnostics.plots import plot_amplification

__all__ = ["Amplification", "AmplificationStage"]

_FIGURE = "amplification.png"


@dataclass(frozen=True)
class Amplification:
    """The record's ``amplification`` section: medians over the sample, per block."""

    blocks: list[str]
    singular_value_median: list[float | None]
    cumulative_median: list[float | None]
    end_to_end_median: float | None
    growth_fisher_median: list[float | None]
    growth_random_median: list[float | None]


def has_blocks(model: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``model`` is an ``nn.Module`` with at least two child blocks to follow."""
    if not isinstance(model, nn.Module):
        return False
    try:
        return len(default_blocks(model)) >= 2
    except (RuntimeError, ValueError, TypeError, AttributeError):
        return False


class AmplificationStage(SampleStage[Amplification]):
    """Layer amplification on the geometry sample (see the module docstring)."""

    name = "amplification"
    description = "layer amplification"
    section = ("amplification",)
    piece_type = Amplification
    result_type = Amplification
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": [
            "blocks",
            "singular_value_median",
            "cumulative_median",
            "end_to_end_median",
            "growth_fisher_median",
            "growth_random_median",
        ],
        "additionalProperties": False,
        "properties": {
            "blocks": {"type": "array", "items": {"type": "string"}},
            "singular_value_median": {"$ref": "#/$defs/numbers"},
            "cumulative_median": {"$ref": "#/$defs/numbers"},
            "end_to_end_median": {"$ref": "#/$defs/number_or_null"},
            "growth_fisher_median": {"$ref": "#/$defs/numbers"},
            "growth_random_median": {"$ref": "#/$defs/numbers"},
        },
    }
    figure_files: ClassVar[Mapping[str, str]] = {"amplification": _FIGURE}

    @override
    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        if has_blocks(model):
            return None
        return (
            "needs an nn.Module with at least two child blocks; this model is a "
            f"{type(model).__name__} without them"
        )

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> Amplification:
        model = plan.model
        assert isinstance(model, nn.Module)  # applies_to checked it
        x, _ = plan.geometry_inputs()
        v1 = input_fisher(model, x, k=1, seed=plan.seed).eigenvectors[:, 0]
        amplification = layer_amplification(model, x, direction=v1, seed=plan.seed)
        if plan.directory is not None:
            plot_amplification(amplification, plan.directory / _FIGURE)
        return from_json(Amplification, amplification.medians(), where=self.name)

    @override
    def verdict(self, result: Amplification, clean_accuracy: float) -> StageVerdict:
        if not result.growth_fisher_median:
            return StageVerdict()
        along, random = result.growth_fisher_median[-1], result.growth_random_median[-1]
        if along is None or random is None:
            return StageVerdict()
        sigma = result.singular_value_median
        loudest = max(range(len(result.blocks)), key=lambda i: sigma[i] or 0.0)
        return StageVerdict(
            sentences=(
                f"A small step along the input Fisher's top eigenvector grows {along:.3g}-fold "
                f"by the logits against "
                f"{random:.3g}-fold for a random one; block {result.blocks[loudest]!r} amplifies "
                "most.",
            )
        )

    @override
    def key_figures(self, result: Amplification, report: Report) -> list[tuple[str, str]]:
        return [("end-to-end amplification", report.number(result.end_to_end_median))]

    @override
    def report(self, result: Amplification, report: Report) -> ReportSection:
        """How much each block stretches a small input change (medians over samples)."""
        summary = (
            "<p>End-to-end amplification: "
            f"{report.text(report.number(result.end_to_end_median))}.</p>"
        )
        columns = zip_longest(
            result.blocks,
            result.singular_value_median,
            result.cumulative_median,
            result.growth_fisher_median,
            result.growth_random_median,
        )
        rows = [(block, *(report.number(v) for v in values)) for block, *values in columns]
        header = ["block", "top singular value", "cumulative", "growth (Fisher)", "growth (random)"]
        return ReportSection(
            "Layer amplification", f"{summary}\n{report.table(header, rows)}", ("amplification",)
        )


register_stage(AmplificationStage())
