"""The audit's ``dangerous`` stage: the Fisher's most dangerous direction beside an attack.

On the correctly classified inputs of the geometry sample (at most :data:`DANGEROUS_ROWS`),
each input is moved along ±v₁, the top eigenvector of its input Fisher information (Zhao
et al. 2019), just past the decision boundary (a line search up to L2 distance 4, not
clipped to the pixel range), and attacked by APGD-CE (Croce and Hein 2020) at the middle
L∞ budget of the ``linf`` stage's settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from typing_extensions import override

from vulnscope._statistics import finite_median
from vulnscope.attacks import APGD
from vulnscope.audit.figures import plot_dangerous
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.diagnostics.distance import class_change_distances, model_classifier
from vulnscope.diagnostics.fisher import input_fisher

__all__ = ["DANGEROUS_ROWS", "Dangerous", "DangerousRow", "DangerousStage"]

DANGEROUS_ROWS = 6
"""Correctly classified inputs shown in the dangerous-perturbation grid."""

_MAX_DISTANCE = 4.0
_FIGURE = "dangerous.png"
_FALLBACK_EPS = 0.1


@dataclass(frozen=True)
class DangerousRow:
    """One input: its index in the data, label, the classes after each step, their sizes."""

    index: int
    label: int
    fisher: int
    fisher_l2: float | None
    adversarial: int
    adversarial_linf: float


@dataclass(frozen=True)
class Dangerous:
    """The record's ``dangerous`` section.

    Attributes:
        fisher_l2: median L2 length of the Fisher step that changes the class.
        linf_eps: the attack's L∞ budget.
        rows: one per input shown.

    """

    fisher_l2: float | None
    linf_eps: float
    rows: list[DangerousRow]


class DangerousStage(SampleStage[Dangerous]):
    """The dangerous perturbation and adversarial examples (see the module docstring)."""

    name = "dangerous"
    description = "the dangerous (Fisher) perturbation and adversarial examples"
    section = ("dangerous",)
    piece_type = Dangerous
    result_type = Dangerous
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["fisher_l2", "linf_eps", "rows"],
        "additionalProperties": False,
        "properties": {
            "fisher_l2": {
                "$ref": "#/$defs/number_or_null",
                "description": "Median L2 step along the Fisher's v1 that changes the class.",
            },
            "linf_eps": {"type": "number", "exclusiveMinimum": 0},
            "rows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "index",
                        "label",
                        "fisher",
                        "fisher_l2",
                        "adversarial",
                        "adversarial_linf",
                    ],
                    "additionalProperties": False,
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "label": {"type": "integer", "minimum": 0},
                        "fisher": {"type": "integer", "minimum": 0},
                        "fisher_l2": {"$ref": "#/$defs/number_or_null"},
                        "adversarial": {"type": "integer", "minimum": 0},
                        "adversarial_linf": {"type": "number", "minimum": 0},
                    },
                    "description": (
                        "A correctly classified input: its label, and the classes predicted "
                        "after the Fisher step and after the attack."
                    ),
                },
            },
        },
    }
    reads = ("linf",)  # its attack budget: the middle of the linf stage's budgets
    figure_files: ClassVar[Mapping[str, str]] = {"dangerous": _FIGURE}

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> Dangerous:
        positive = sorted(eps for eps in plan.epsilons["linf"] if eps > 0) or [_FALLBACK_EPS]
        eps = positive[len(positive) // 2]
        model, seed = plan.model, plan.seed
        x, y = plan.geometry_inputs()
        with torch.no_grad():
            predicted = model(x).argmax(1)
        rows = (predicted == y).nonzero()[:, 0][:DANGEROUS_ROWS]
        if rows.numel() == 0:
            return Dangerous(fisher_l2=None, linf_eps=eps, rows=[])
        x, y = x[rows], y[rows]
        v1 = input_fisher(model, x, k=1, seed=seed).eigenvectors[:, 0]
        flat = v1.flatten(1)
        distances = class_change_distances(
            model_classifier(model, tuple(x.shape[1:])),
            x.flatten(1),
            torch.stack([flat, -flat], 1),
            max_distance=_MAX_DISTANCE,
            both_signs=False,
        )
        sign = torch.where(distances[:, 0] <= distances[:, 1], 1.0, -1.0).to(x.dtype)
        distance = distances.min(1).values
        # just past the boundary (the line search brackets it from below)
        step = torch.where(torch.isfinite(distance), distance * 1.001, torch.zeros_like(distance))
        moved = x + (sign * step.to(x.dtype)).reshape(-1, *[1] * (x.ndim - 1)) * v1  # unit v1
        adversarial = APGD(norm="linf", eps=eps, seed=seed)(model, x, y).x_adv
        with torch.no_grad():
            fisher_class = model(moved).argmax(1)
            adversarial_class = model(adversarial).argmax(1)
        if plan.directory is not None:
            plot_dangerous(
                x,
                v1,
                moved,
                adversarial,
                labels=y,
                fisher=fisher_class,
                adversarial=adversarial_class,
                distances=distance,
                eps=eps,
                path=plan.directory / _FIGURE,
                class_names=plan.data.class_names,
            )
        linf = (adversarial - x).flatten(1).abs().amax(1)
        indices = plan.sample[rows.cpu()]  # positions in the data, not in the sample
        return Dangerous(
            fisher_l2=finite_median(distance),
            linf_eps=eps,
            rows=[
                DangerousRow(
                    int(index),
                    int(label),
                    int(f),
                    float(d) if math.isfinite(float(d)) else None,
                    int(a),
                    float(norm),
                )
                for index, label, f, d, a, norm in zip(
                    indices.tolist(),
                    y.tolist(),
                    fisher_class.tolist(),
                    distance.tolist(),
                    adversarial_class.tolist(),
                    linf.tolist(),
                    strict=True,
                )
            ],
        )

    @override
    def verdict(self, result: Dangerous, clean_accuracy: float) -> StageVerdict:
        if result.fisher_l2 is None:
            return StageVerdict()
        return StageVerdict(
            sentences=(
                f"Along the most dangerous direction (the top eigenvector of the input Fisher "
                f"information) the class changes after a median L2 step of {result.fisher_l2:.3g}.",
            )
        )

    @override
    def report(self, result: Dangerous, report: Report) -> ReportSection:
        """The predicted classes of originals, Fisher-perturbed and adversarial examples."""
        names = report.class_names

        def label(index: int) -> str:
            known = names is not None and 0 <= index < len(names)
            return str(names[index]) if names is not None and known else report.number(index)

        summary = (
            "<p>Each correctly classified input is moved along the most dangerous direction "
            "(±v₁ of the input Fisher information) just past the decision boundary "
            f"(median L2 step {report.text(report.number(result.fisher_l2))}, not clipped to "
            "the pixel range), and attacked by APGD-CE at L∞ ε = "
            f"{report.text(report.number(result.linf_eps))}. The classes predicted on each:</p>"
        )
        rows = [
            (
                row.index,
                label(row.label),
                label(row.fisher),
                label(row.adversarial),
                report.number(row.fisher_l2),
                report.number(row.adversarial_linf),
            )
            for row in result.rows
        ]
        header = ["index", "label", "Fisher", "adversarial", "Fisher step (L2)", "adversarial L∞"]
        return ReportSection(
            "Dangerous perturbations", f"{summary}\n{report.table(header, rows)}", ("dangerous",)
        )


register_stage(DangerousStage())
