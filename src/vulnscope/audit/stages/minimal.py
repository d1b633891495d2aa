"""The audit's ``minimal`` stage: the distribution of minimal L2 perturbations.

The smallest L2 perturbation that changes each decision (Moosavi-Dezfooli, Fawzi and
Frossard 2016): DeepFool's fast linearised steps, then FAB (Croce and Hein 2020), which
projects onto the boundary; each point keeps the smaller. Robust accuracy at every L2
budget is this distribution's survival function. Chunk ``k`` of the data is piece ``k``
(FAB seeded ``seed + k``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from typing_extensions import override

from vulnscope.attacks import FAB, Attack, DeepFool
from vulnscope.audit.codec import IN_MEMORY
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    Stage,
    StageVerdict,
    register_stage,
)
from vulnscope.evaluate import (
    MinimalChunk,
    MinimalPerturbations,
    merge_minimal_chunks,
    minimal_chunk,
    plot_minimal_perturbations,
)

__all__ = ["MINIMAL_ATTACKS", "QUICK_MINIMAL_ATTACKS", "MinimalResult", "MinimalStage"]

MINIMAL_ATTACKS = ("deepfool", "fab")
"""The minimal attacks of the full audit; ``--quick`` runs DeepFool alone."""

QUICK_MINIMAL_ATTACKS = ("deepfool",)
"""The minimal attacks of ``--quick``."""


def _attacks(names: Sequence[str], seed: int) -> list[Attack]:
    """The minimal attacks by name, FAB seeded with ``seed``."""
    return [
        DeepFool(norm="l2") if name == "deepfool" else FAB(norm="l2", seed=seed) for name in names
    ]


@dataclass(frozen=True)
class Histogram:
    """Counts of the perturbations found per bin, and the bins' edges."""

    counts: list[int]
    edges: list[float]


@dataclass(frozen=True)
class MinimalResult:
    """The record's ``minimal_perturbations`` (``MinimalPerturbations.to_dict``'s layout).

    Attributes:
        norm: ``"l2"``.
        attacks: the minimal attacks, in order.
        n: samples.
        n_clean_correct: samples classified correctly.
        n_not_found: correctly classified samples no attack broke.
        median: median perturbation over the correctly classified (None: not found).
        mean_found: mean over those an attack broke.
        quantiles: by quantile (``"0.1"``...), the perturbation size.
        found_by: samples per attack (``"clean"``, ``"none"``).
        histogram: of the sizes found.
        input_l2_median: median L2 norm of the inputs (for scale).
        distribution: the per-sample result (in memory only).

    """

    norm: str
    attacks: list[str]
    n: int
    n_clean_correct: int
    n_not_found: int
    median: float | None
    mean_found: float | None
    quantiles: dict[str, float | None]
    found_by: dict[str, int]
    histogram: Histogram
    input_l2_median: float
    distribution: MinimalPerturbations | None = field(default=None, metadata=IN_MEMORY)


class MinimalStage(Stage[MinimalChunk, MinimalResult]):
    """Minimal L2 perturbations, chunk by chunk (see the module docstring)."""

    name = "minimal"
    description = "minimal L2 perturbations (DeepFool, FAB)"
    section = ("minimal_perturbations",)
    piece_type = MinimalChunk
    result_type = MinimalResult
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": [
            "norm",
            "attacks",
            "n",
            "n_clean_correct",
            "n_not_found",
            "median",
            "mean_found",
            "quantiles",
            "found_by",
            "histogram",
            "input_l2_median",
        ],
        "additionalProperties": False,
        "properties": {
            "norm": {"const": "l2"},
            "attacks": {"type": "array", "items": {"type": "string"}},
            "n": {"type": "integer", "minimum": 0},
            "n_clean_correct": {"type": "integer", "minimum": 0},
            "n_not_found": {"type": "integer", "minimum": 0},
            "median": {
                "$ref": "#/$defs/number_or_null",
                "description": (
                    "Median over the correctly classified points (None when fewer than half were "
                    "broken)."
                ),
            },
            "mean_found": {"$ref": "#/$defs/number_or_null"},
            "quantiles": {
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/number_or_null"},
            },
            "found_by": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "histogram": {
                "type": "object",
                "required": ["counts", "edges"],
                "additionalProperties": False,
                "properties": {
                    "counts": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "edges": {"type": "array", "items": {"type": "number"}},
                },
            },
            "input_l2_median": {
                "type": "number",
                "minimum": 0,
                "description": "Median L2 norm of the inputs, for scale.",
            },
        },
    }

    @override
    def pieces(self, plan: AuditPlan) -> list[Piece]:
        return [
            Piece(f"{self.name}-{index:05d}", index, start, stop)
            for index, (start, stop) in enumerate(plan.chunks)
        ]

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> MinimalChunk:
        x, y = plan.rows(piece.start, piece.stop)
        names = QUICK_MINIMAL_ATTACKS if plan.quick else MINIMAL_ATTACKS
        return minimal_chunk(plan.model, x, y, attacks=_attacks(names, plan.seed + piece.index))

    @override
    def merge(
        self, pieces: Sequence[MinimalChunk], plan: AuditPlan, results: Mapping[str, Any]
    ) -> MinimalResult:
        merged = merge_minimal_chunks(pieces)
        section = {
            **merged.to_dict(),
            "input_l2_median": float(plan.data.x.flatten(1).norm(dim=1).median()),
        }
        return dataclasses.replace(self.decode_result(section), distribution=merged)

    @override
    def figures(
        self,
        result: MinimalResult,
        plan: AuditPlan,
        results: Mapping[str, Any],
        clean_accuracy: float,
    ) -> dict[str, str]:
        if plan.directory is None or result.distribution is None:
            return {}
        name = "minimal_perturbations.png"
        plot_minimal_perturbations(result.distribution, plan.directory / name)
        return {"minimal_perturbations": name}

    @override
    def verdict(self, result: MinimalResult, clean_accuracy: float) -> StageVerdict:
        if result.median is None:
            return StageVerdict()
        typical = result.input_l2_median
        share = (
            f" ({100 * result.median / typical:.1f}% of a typical input's norm)" if typical else ""
        )
        return StageVerdict(
            sentences=(
                f"Half of the correctly classified inputs change class under an L2 perturbation "
                f"of at most {result.median:.3g}{share}.",
            )
        )

    @override
    def summary(self, result: MinimalResult) -> list[str]:
        if result.median is None:
            return []
        return [f"median minimal L2 perturbation: {result.median:.3g}"]

    @override
    def key_figures(self, result: MinimalResult, report: Report) -> list[tuple[str, str]]:
        return [("median minimal L2 perturbation", report.number(result.median))]

    @override
    def report(self, result: MinimalResult, report: Report) -> ReportSection:
        """Quantiles of the smallest L2 perturbation that changes the class, and who found it."""
        summary = (
            f"<p>{report.text(result.n)} samples, {report.text(result.n_clean_correct)} "
            f"correctly classified; no adversarial example found for "
            f"{report.text(result.n_not_found)}. Mean size of those found: "
            f"{report.text(report.number(result.mean_found))}.</p>"
        )
        quantiles = report.table(
            ["quantile", "L2 size"], [(q, report.number(v)) for q, v in result.quantiles.items()]
        )
        found = report.table(
            ["attack", "found"], [(a, report.number(n)) for a, n in result.found_by.items()]
        )
        return ReportSection(
            "Minimal perturbations", f"{summary}\n{quantiles}\n{found}", ("minimal_perturbations",)
        )


register_stage(MinimalStage())
