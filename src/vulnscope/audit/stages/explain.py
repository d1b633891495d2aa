"""The audit's ``explain`` stage: what an adversarial perturbation does to the explanation.

On the first correctly classified points of the geometry sample, each with its minimal
L2 adversarial example (DeepFool):

- LRP maps (:func:`~vulnscope.explain.lrp.lrp`, the default composite: zᴮ at the input,
  γ for convolutions, ε for dense layers) of the clean point for its class and of the
  adversarial example for the class it gets, and how much the two maps agree;
- at every hidden linear layer, the concepts (channels) the perturbation switches on and
  off (:func:`~vulnscope.explain.concepts.concept_shift`, Achtibat et al.'s conditional
  relevance), and where in the input the switched-on ones act;
- for the embedded 8×8 digits, whose normalising flow vulnscope trains and caches
  (:func:`~vulnscope.explain.flow_training.pretrained_flow`; ``--quick`` uses it only if
  it is cached), the counterfactual found in the flow's coordinates towards the
  adversarial example's class (Dombrowski et al.), beside the adversarial example:
  distance and likelihood under the flow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from vulnscope.attacks.deepfool import DeepFool
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.errors import ModelError
from vulnscope.explain.concepts import ConceptShift, concept_shift
from vulnscope.explain.counterfactual import counterfactual
from vulnscope.explain.flow_training import cached_flow, pretrained_flow
from vulnscope.explain.lrp import lrp
from vulnscope.explain.network import read_network
from vulnscope.explain.plots import plot_explanations
from vulnscope.explain.rules import LinearMap

__all__ = ["ConceptChange", "CounterfactualFigures", "ExplainStage", "Explanation"]

_FIGURE = "explain.png"
_POINTS = 8
"""Correct points of the geometry sample explained (4 with ``--quick``)."""
_SHOWN = 4
"""Points the figure shows."""
_TOP = 3
"""Concepts reported switched on and off per layer."""


@dataclass(frozen=True)
class ConceptChange:
    """One layer's concepts under the perturbation.

    Attributes:
        layer: the layer's dotted name.
        concepts: its channels (units of a dense layer).
        switched_on: the concepts most often among each point's top switched on for the
            adversarial class, most frequent first.
        switched_off: the same for the concepts switched off for the true class.
        shift_median: median over points of how much of the adversarial class's concept
            relevance is new, ``‖r_adv − r_clean‖₁ / ‖r_adv‖₁`` (0: the same concepts
            carry the new class before and after; 2: entirely different ones).

    """

    layer: str
    concepts: int
    switched_on: list[int]
    switched_off: list[int]
    shift_median: float | None


@dataclass(frozen=True)
class CounterfactualFigures:
    """Counterfactuals in the flow's coordinates beside the adversarial examples.

    Attributes:
        reached: share of counterfactuals the model gives the adversarial example's class.
        distance_median: their median L2 distance to the input.
        adversarial_distance_median: the adversarial examples' median L2 distance.
        log_prob_median: the counterfactuals' median log-density under the flow (nats).
        adversarial_log_prob_median: the adversarial examples' median log-density.
        input_log_prob_median: the clean points' median log-density.

    """

    reached: float
    distance_median: float | None
    adversarial_distance_median: float | None
    log_prob_median: float | None
    adversarial_log_prob_median: float | None
    input_log_prob_median: float | None


@dataclass(frozen=True)
class Explanation:
    """The record's ``explain`` section.

    Attributes:
        points: correctly classified points explained.
        adversarial_median: median L2 size of their adversarial examples (DeepFool).
        map_cosine_median: median cosine similarity between the LRP map of the clean
            point (its class) and of its adversarial example (the new class).
        layers: the concepts the perturbation changes, per hidden linear layer.
        counterfactual: the flow's counterfactuals (None: no flow for this data).

    """

    points: int
    adversarial_median: float | None
    map_cosine_median: float | None
    layers: list[ConceptChange]
    counterfactual: CounterfactualFigures | None


def _median(values: Tensor) -> float | None:
    finite = values[torch.isfinite(values)]
    return float(finite.median()) if finite.numel() else None


def _most_common(indices: Tensor, count: int) -> list[int]:
    tally = Counter(int(i) for i in indices.flatten().tolist())
    return [concept for concept, _ in tally.most_common(count)]


def _concept_layers(model: nn.Module) -> list[str]:
    """The hidden linear layers: every Linear or Conv2d but the last (the logits)."""
    maps = [step.name for step in read_network(model).steps if isinstance(step, LinearMap)]
    return maps[:-1]


def _changes(shift: ConceptShift) -> list[ConceptChange]:
    changes = []
    for layer in shift.layers:
        moved = (layer.new_perturbed - layer.new_clean).abs().sum(1)
        total = layer.new_perturbed.abs().sum(1).clamp_min(1e-12)
        changes.append(
            ConceptChange(
                layer=layer.layer,
                concepts=int(layer.new_clean.shape[1]),
                switched_on=_most_common(layer.switched_on[:, :1], _TOP),
                switched_off=_most_common(layer.switched_off[:, :1], _TOP),
                shift_median=_median(moved / total),
            )
        )
    return changes


def _has_flow(plan: AuditPlan) -> bool:
    """Whether vulnscope has a flow for the data: the embedded 8×8 digits."""
    return plan.data.source.startswith("digits:") and tuple(plan.data.x.shape[1:]) == (1, 8, 8)


class ExplainStage(SampleStage[Explanation]):
    """LRP, concepts and counterfactuals on the geometry sample (see the module docstring)."""

    name = "explain"
    description = "explanations of adversarial examples (LRP, concepts, counterfactuals)"
    section = ("explain",)
    piece_type = Explanation
    result_type = Explanation
    figure_files: ClassVar[Mapping[str, str]] = {"explain": _FIGURE}
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": [
            "points",
            "adversarial_median",
            "map_cosine_median",
            "layers",
            "counterfactual",
        ],
        "additionalProperties": False,
        "properties": {
            "points": {"type": "integer", "minimum": 0},
            "adversarial_median": {"$ref": "#/$defs/number_or_null"},
            "map_cosine_median": {"$ref": "#/$defs/number_or_null"},
            "layers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "layer",
                        "concepts",
                        "switched_on",
                        "switched_off",
                        "shift_median",
                    ],
                    "properties": {
                        "layer": {"type": "string"},
                        "concepts": {"type": "integer", "minimum": 1},
                        "switched_on": {"type": "array", "items": {"type": "integer"}},
                        "switched_off": {"type": "array", "items": {"type": "integer"}},
                        "shift_median": {"$ref": "#/$defs/number_or_null"},
                    },
                },
            },
            "counterfactual": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [
                            "reached",
                            "distance_median",
                            "adversarial_distance_median",
                            "log_prob_median",
                            "adversarial_log_prob_median",
                            "input_log_prob_median",
                        ],
                        "properties": {
                            "reached": {"$ref": "#/$defs/fraction"},
                            "distance_median": {"$ref": "#/$defs/number_or_null"},
                            "adversarial_distance_median": {"$ref": "#/$defs/number_or_null"},
                            "log_prob_median": {"$ref": "#/$defs/number_or_null"},
                            "adversarial_log_prob_median": {"$ref": "#/$defs/number_or_null"},
                            "input_log_prob_median": {"$ref": "#/$defs/number_or_null"},
                        },
                    },
                ]
            },
        },
    }

    @override
    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        if not isinstance(model, nn.Module):
            return f"needs an nn.Module for LRP; this model is a {type(model).__name__}"
        try:
            layers = _concept_layers(model)
        except ModelError as error:
            return str(error)
        if not layers:
            return "needs a hidden Linear or Conv2d layer whose channels are concepts"
        return None

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> Explanation:
        model = plan.model
        assert isinstance(model, nn.Module)  # applies_to checked it
        x, y = plan.geometry_inputs()
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        chosen = correct.nonzero()[:, 0][: _POINTS // 2 if plan.quick else _POINTS]
        x, y = x[chosen], y[chosen]
        layers = _concept_layers(model)
        if not len(x):
            return Explanation(0, None, None, [], None)
        attack = DeepFool(norm="l2", overshoot=0.02, steps=50)
        adversarial = attack(model, x, y)
        broken = adversarial.success
        x, y, x_adv = x[broken], y[broken], adversarial.x_adv[broken]
        shift = concept_shift(model, x, y, layers=layers, perturbed=x_adv, top=_TOP)
        clean_map = lrp(model, x, y)
        adversarial_map = lrp(model, x_adv, shift.new_labels)
        cosine = torch.nn.functional.cosine_similarity(
            clean_map.flatten(1), adversarial_map.flatten(1), dim=1
        )
        figures = None
        counterfactuals = None
        # --quick does not spend the flow's training (10-20 s, once) on a first look
        flow = None
        if _has_flow(plan) and len(x):
            flow = cached_flow() if plan.quick else pretrained_flow()
        if flow is not None:
            found = counterfactual(model, flow, x, shift.new_labels, attack=None)
            counterfactuals = found.counterfactual.x
            with torch.no_grad():
                adversarial_log_prob = flow.log_prob(x_adv)
            figures = CounterfactualFigures(
                reached=float(found.counterfactual.reached.float().mean()),
                distance_median=_median(found.counterfactual.distance),
                adversarial_distance_median=_median((x_adv - x).flatten(1).norm(dim=1)),
                log_prob_median=_median(found.counterfactual.log_prob),
                adversarial_log_prob_median=_median(adversarial_log_prob),
                input_log_prob_median=_median(found.input_log_prob),
            )
        if plan.directory is not None and len(x):
            plot_explanations(
                x[:_SHOWN],
                y[:_SHOWN],
                x_adv[:_SHOWN],
                shift.new_labels[:_SHOWN],
                clean_map[:_SHOWN],
                adversarial_map[:_SHOWN],
                shift.layers[-1].heatmap[:_SHOWN] if shift.layers else None,
                None if counterfactuals is None else counterfactuals[:_SHOWN],
                plan.directory / _FIGURE,
            )
        return Explanation(
            points=len(x),
            adversarial_median=_median(adversarial.norms[broken]),
            map_cosine_median=_median(cosine),
            layers=_changes(shift),
            counterfactual=figures,
        )

    @override
    def verdict(self, result: Explanation, clean_accuracy: float) -> StageVerdict:
        if not result.points or result.map_cosine_median is None:
            return StageVerdict()
        sentences = [
            f"An adversarial perturbation of median L2 {result.adversarial_median:.3g} "
            f"changes the explanation: the LRP maps of the clean points and of their "
            f"adversarial examples have median cosine similarity "
            f"{result.map_cosine_median:.2f}."
        ]
        if result.layers:
            last = result.layers[-1]
            sentences.append(
                f"At layer {last.layer!r} it switches on concepts {last.switched_on} for the "
                f"new class and off {last.switched_off} for the true one."
            )
        found = result.counterfactual
        if found is not None and found.log_prob_median is not None:
            sentences.append(
                f"Counterfactuals found in a normalising flow's coordinates reach the new "
                f"class on {found.reached:.0%} of the points at median L2 "
                f"{found.distance_median:.3g}, where the flow finds them likely "
                f"(log-density {found.log_prob_median:.0f} nats against "
                f"{found.adversarial_log_prob_median:.0f} for the adversarial examples)."
            )
        return StageVerdict(sentences=tuple(sentences))

    @override
    def summary(self, result: Explanation) -> list[str]:
        if not result.points or result.map_cosine_median is None:
            return []
        line = (
            f"explain: {result.points} points; LRP maps of clean and adversarial inputs, "
            f"median cosine {result.map_cosine_median:.2f}"
        )
        found = result.counterfactual
        if found is not None and found.log_prob_median is not None:
            line += (
                f"; counterfactuals reach {found.reached:.0%} at log-density "
                f"{found.log_prob_median:.0f} nats (adversarial "
                f"{found.adversarial_log_prob_median:.0f})"
            )
        return [line]

    @override
    def key_figures(self, result: Explanation, report: Report) -> list[tuple[str, str]]:
        return [("LRP map cosine, clean vs adversarial", report.number(result.map_cosine_median))]

    @override
    def report(self, result: Explanation, report: Report) -> ReportSection:
        """The maps' agreement, the concepts per layer and the counterfactuals."""
        intro = (
            f"<p>{result.points} correctly classified points and their minimal L2 adversarial "
            f"examples (DeepFool, median {report.text(report.number(result.adversarial_median))}"
            f"); median cosine of their LRP maps "
            f"{report.text(report.number(result.map_cosine_median))}.</p>"
        )
        rows = [
            (
                change.layer,
                change.concepts,
                ", ".join(map(str, change.switched_on)),
                ", ".join(map(str, change.switched_off)),
                report.number(change.shift_median),
            )
            for change in result.layers
        ]
        header = ["layer", "concepts", "switched on", "switched off", "relevance moved"]
        body = f"{intro}\n{report.table(header, rows)}"
        found = result.counterfactual
        if found is not None:
            figures = [
                ("reaches the class", report.percent(found.reached), "—"),
                (
                    "median L2 distance",
                    report.number(found.distance_median),
                    report.number(found.adversarial_distance_median),
                ),
                (
                    "median log-density (nats; the inputs': "
                    f"{report.number(found.input_log_prob_median)})",
                    report.number(found.log_prob_median),
                    report.number(found.adversarial_log_prob_median),
                ),
            ]
            body += "\n" + report.table(["", "counterfactual", "adversarial"], figures)
        return ReportSection("Explaining the vulnerability", body, ("explain",))


register_stage(ExplainStage())
