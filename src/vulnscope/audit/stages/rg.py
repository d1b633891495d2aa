"""The audit's ``rg`` stage: a deep RBM network read as a flow of effective Hamiltonians.

Monte Carlo RG estimates each layer's stability matrix; eigenvalues above one are
relevant operators, along which small input changes grow with depth, and the chain-rule
Fisher information gives the most dangerous input direction (``shared/method/RG.md``,
:func:`vulnscope.rg.rg_analysis`). Runs on the first inputs of the geometry sample,
binarised at 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor
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
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.pretrained import BINARIZE_THRESHOLD
from vulnscope.rg.plots import plot_directions, plot_layers
from vulnscope.rg.study import rg_analysis

__all__ = ["RG_INPUTS", "RGLayer", "RGResult", "RGStage", "RGSummary"]

RG_INPUTS = {False: (20, 10_000), True: (6, 2_000)}
"""Inputs analysed and Monte Carlo chains per input, without and with ``quick``."""

_FIGURES = {"rg_layers": "rg_layers.png", "rg_directions": "rg_directions.png"}


@dataclass(frozen=True)
class RGLayer:
    """Per hidden layer (and the label layer): averages over the analysed inputs."""

    layer: int
    kind: str
    leading_mean: float | None
    leading_stderr_over_inputs: float | None
    leading_jackknife_median: float | None
    singular_mean: float | None
    relevant_mean: float | None


@dataclass(frozen=True)
class RGSummary:
    """Averages over the analysed inputs (``RGReport.summary``, infinities as None)."""

    inputs: int
    skipped_certain: int
    accuracy_sampled: float
    layers: list[RGLayer]
    product_norm_mean: float | None
    product_norm_stderr: float | None
    fisher_top_median: float | None
    mean_field_alignment_median: float | None
    class_change_distance_median: dict[str, float | None]
    class_change_found_fraction: dict[str, float | None]


@dataclass(frozen=True)
class RGOperators:
    """The operators whose couplings the stability matrices follow."""

    count: int
    labels: list[str]


@dataclass(frozen=True)
class RGResult:
    """The record's ``rg`` section.

    Attributes:
        depth: layers of the network.
        widths: their widths.
        operators: the operators followed.
        summary: averages over the inputs.
        relevant_layers: layers whose mean leading eigenvalue exceeds one.

    """

    depth: int
    widths: list[int]
    operators: RGOperators
    summary: RGSummary
    relevant_layers: list[int]


class RGStage(SampleStage[RGResult]):
    """The RG analysis of a deep RBM network (see the module docstring)."""

    name = "rg"
    description = "renormalisation-group analysis of the deep RBM"
    section = ("rg",)
    piece_type = RGResult
    result_type = RGResult
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["depth", "widths", "operators", "summary", "relevant_layers"],
        "additionalProperties": False,
        "properties": {
            "depth": {"type": "integer", "minimum": 2},
            "widths": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "operators": {
                "type": "object",
                "required": ["count", "labels"],
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "labels": {"type": "array", "items": {"type": "string"}},
                },
            },
            "summary": {
                "type": "object",
                "required": ["inputs", "layers"],
                "description": "Averages over the analysed inputs (RGReport.summary).",
                "properties": {
                    "inputs": {"type": "integer", "minimum": 0},
                    "layers": {
                        "type": "array",
                        "items": {"type": "object", "required": ["layer", "kind", "leading_mean"]},
                    },
                },
            },
            "relevant_layers": {
                "type": "array",
                "items": {"type": "integer", "minimum": 2},
                "description": "Layers whose mean leading eigenvalue exceeds one.",
            },
        },
    }
    figure_files: ClassVar[Mapping[str, str]] = _FIGURES

    @override
    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        if isinstance(model, DeepRBM):
            return None
        kind = type(model).__name__
        return f"needs a deep RBM network (e.g. --model digits-rbm); this model is a {kind}"

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> RGResult:
        network = plan.model
        assert isinstance(network, DeepRBM)  # applies_to checked it
        inputs, chains = RG_INPUTS[plan.quick]
        x, y = plan.geometry_inputs()
        binary = (x[:inputs] > BINARIZE_THRESHOLD).to(x.dtype)
        report = rg_analysis(network, binary, y[:inputs], samples=chains, seed=plan.seed)
        if plan.directory is not None:
            plot_layers(report, plan.directory / _FIGURES["rg_layers"])
            plot_directions(report, binary, plan.directory / _FIGURES["rg_directions"])
        record = report.to_dict()
        layers = record["summary"]["layers"]
        return from_json(
            RGResult,
            {
                "depth": record["depth"],
                "widths": record["widths"],
                "operators": record["operators"],
                "summary": record["summary"],
                "relevant_layers": [
                    row["layer"]
                    for row in layers
                    if row["kind"] == "eigenvalue" and (row["leading_mean"] or 0.0) > 1.0
                ],
            },
            where=self.name,
        )

    @override
    def verdict(self, result: RGResult, clean_accuracy: float) -> StageVerdict:
        relevant = result.relevant_layers
        sentences = [
            f"The RG analysis finds relevant operators (leading eigenvalue above one) at "
            f"layer{'s' if len(relevant) > 1 else ''} {', '.join(map(str, relevant))}: "
            f"there small input changes grow with depth."
            if relevant
            else "The RG analysis finds no relevant operator between hidden layers: their "
            "stability matrices contract, so small input changes shrink with depth there."
        ]
        label = [row for row in result.summary.layers if row.kind != "eigenvalue"]
        if label and (label[0].leading_mean or 0.0) > 1.0:
            sentences.append(
                f"The label layer amplifies them (leading singular value "
                f"{label[0].leading_mean:.3g})."
            )
        return StageVerdict(sentences=tuple(sentences))

    @override
    def key_figures(self, result: RGResult, report: Report) -> list[tuple[str, str]]:
        relevant = ", ".join(report.number(layer) for layer in result.relevant_layers)
        return [("relevant RG layers", relevant or "none")]

    @override
    def report(self, result: RGResult, report: Report) -> ReportSection:
        """The RG analysis: per-layer leading eigenvalues and relevance."""
        summary, relevant = result.summary, set(result.relevant_layers)
        number, text = report.number, report.text
        widths = json.dumps(result.widths, separators=(",", ":"))
        intro = (
            f"<p>Depth {text(result.depth)}, widths {text(widths)}, "
            f"{text(result.operators.count)} operators, {text(summary.inputs)} inputs. "
            f"Product norm {text(number(summary.product_norm_mean))} ± "
            f"{text(number(summary.product_norm_stderr))}.</p>"
        )
        rows = [
            (
                layer.layer,
                layer.kind,
                f"{number(layer.leading_mean)} ± {number(layer.leading_stderr_over_inputs)}",
                number(layer.leading_jackknife_median),
                number(layer.singular_mean),
                number(layer.relevant_mean),
                "yes" if layer.layer in relevant else "no",
            )
            for layer in summary.layers
        ]
        header = [
            "layer",
            "kind",
            "leading eigenvalue",
            "jackknife median",
            "singular value",
            "relevant operators",
            "relevant",
        ]
        found = summary.class_change_found_fraction
        changes = report.table(
            ["direction", "median distance to a class change", "found"],
            [
                (key, number(value), report.percent(found.get(key)))
                for key, value in summary.class_change_distance_median.items()
            ],
        )
        body = f"{intro}\n{report.table(header, rows)}\n{changes}"
        return ReportSection("Renormalisation-group analysis", body, tuple(_FIGURES))


register_stage(RGStage())
