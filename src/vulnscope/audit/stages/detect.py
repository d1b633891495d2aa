"""The audit's ``detect`` stage: the model's detector under three attackers.

For a model file written by ``vulnscope defend --method <detector>`` (a
:class:`~vulnscope.detect.detected.Detected`), Carlini and Wagner's (2017) evaluation on
the first 64 points of the data (:func:`~vulnscope.detect.evaluation.evaluate_detector`):

- **zero knowledge**: C&W L2 ignores the detector;
- **perfect knowledge**: C&W's combined loss through the detector's score (EOT for a
  random score);
- **limited knowledge**: the attacker fits its own copy of the detector on up to 200
  points of its own (those after the 200 that set the threshold, disjoint from the
  attacked ones), attacks the copy and transfers its examples to the real detector.

Each gives the ROC AUC, the true-positive rate at 5% false positives (the threshold set
on the first 200 clean points of the data), the attack's success against classifier and
detector together, and its L2 distortion against the undefended model's. The verdict
never calls a detector robust on zero-knowledge evidence alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor
from typing_extensions import override

from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.detect.detected import Detected
from vulnscope.detect.evaluation import KNOWLEDGE, DetectionReport, evaluate_detector
from vulnscope.detect.plots import plot_detection
from vulnscope.errors import VulnscopeError

__all__ = ["Detection", "DetectionStage", "ThreatModel"]

_FIGURE = "detect.png"
_CLEAN = 200
"""Clean points (the first of the data) that set the threshold and the ROC's negatives."""
_FPR = 0.05
_ATTACKED = 64
"""The fewest points attacked (the first of the data; more with a larger geometry sample)."""
_ATTACKER = 200
"""Points the limited-knowledge attacker fits its copy on: the data's after the clean ones."""
_BROKEN = 0.5
"""A perfect-knowledge success rate from which the verdict says the detector is broken."""


@dataclass(frozen=True)
class ThreatModel:
    """One attacker's figures (see :class:`~vulnscope.detect.evaluation.DetectionReport`)."""

    knowledge: str
    gradient: str
    auc: float | None
    tpr_at_5fpr: float | None
    success_rate: float | None
    distortion_ratio: float | None
    attacked: int
    fooled: int
    successes: int
    skipped: str | None = None
    """Why this attacker could not run (no points were left to fit its copy of the
    detector on, or too few, say), else None."""


@dataclass(frozen=True)
class Detection:
    """The record's ``detect`` section.

    Attributes:
        detector: the detector's name.
        paper: where its design comes from.
        fpr: the false-positive rate of the threshold.
        clean: the clean points that set it.
        threat_models: zero, perfect and limited knowledge, in that order.

    """

    detector: str
    paper: str
    fpr: float
    clean: int
    threat_models: list[ThreatModel]


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _threat_model(report: DetectionReport) -> ThreatModel:
    return ThreatModel(
        knowledge=report.knowledge,
        gradient=report.gradient,
        auc=_number(report.auc),
        tpr_at_5fpr=_number(report.tpr_at_5fpr),
        success_rate=report.success_rate,
        distortion_ratio=_number(report.distortion_ratio),
        attacked=report.attacked,
        fooled=report.fooled,
        successes=report.successes,
    )


_NUMBER = {"$ref": "#/$defs/number_or_null"}


class DetectionStage(SampleStage[Detection]):
    """The model's detector under zero, limited and perfect knowledge (module docstring)."""

    name = "detect"
    description = "the model's detector under zero-, limited- and perfect-knowledge attacks"
    section = ("detect",)
    piece_type = Detection
    result_type = Detection
    figure_files: ClassVar[Mapping[str, str]] = {"detect": _FIGURE}
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["detector", "paper", "fpr", "clean", "threat_models"],
        "properties": {
            "detector": {"type": "string"},
            "paper": {"type": "string"},
            "fpr": {"$ref": "#/$defs/fraction"},
            "clean": {"type": "integer", "minimum": 1},
            "threat_models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "knowledge",
                        "gradient",
                        "auc",
                        "tpr_at_5fpr",
                        "success_rate",
                        "distortion_ratio",
                        "attacked",
                        "fooled",
                        "successes",
                        "skipped",
                    ],
                    "properties": {
                        "knowledge": {"enum": list(KNOWLEDGE)},
                        "gradient": {"type": "string"},
                        "auc": _NUMBER,
                        "tpr_at_5fpr": _NUMBER,
                        "success_rate": {"oneOf": [{"$ref": "#/$defs/fraction"}, {"type": "null"}]},
                        "distortion_ratio": _NUMBER,
                        "attacked": {"type": "integer", "minimum": 0},
                        "fooled": {"type": "integer", "minimum": 0},
                        "successes": {"type": "integer", "minimum": 0},
                        "skipped": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }

    @override
    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        if isinstance(model, Detected):
            return None
        return (
            "needs a model with a detector (a file 'vulnscope defend --method <detector>' "
            "wrote, or a vulnscope.detect.Detected)"
        )

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> Detection:
        model = plan.model
        assert isinstance(model, Detected)  # applies_to checked it
        detector, classifier = model.detector, model[0]
        x, y = plan.rows(0, min(len(plan.data), max(_ATTACKED, int(plan.sample.numel()))))
        clean = plan.data.x[:_CLEAN].to(plan.device)
        own = plan.rows(_CLEAN, _CLEAN + _ATTACKER)
        reports: list[DetectionReport] = []
        models: list[ThreatModel] = []
        for level in KNOWLEDGE:
            if level == "limited" and own[0].shape[0] == 0:
                reason = (
                    f"the data has no points after the {clean.shape[0]} clean ones for the "
                    f"attacker's copy of the detector"
                )
                models.append(ThreatModel(level, "", None, None, None, None, 0, 0, 0, reason))
                continue
            try:
                report = evaluate_detector(
                    detector,
                    classifier,
                    x,
                    y,
                    knowledge=level,
                    fpr=_FPR,
                    clean=clean,
                    attacker_inputs=own[0] if level == "limited" else None,
                    attacker_labels=own[1] if level == "limited" else None,
                    seed=plan.seed,
                )
            except VulnscopeError as error:
                if level != "limited":
                    raise
                # the attacker's copy could not be fitted on the points left to it
                models.append(ThreatModel(level, "", None, None, None, None, 0, 0, 0, str(error)))
                continue
            reports.append(report)
            models.append(_threat_model(report))
        if plan.directory is not None:
            plot_detection(reports, plan.directory / _FIGURE)
        return Detection(
            detector=detector.name,
            paper=detector.paper,
            fpr=_FPR,
            clean=int(clean.shape[0]),
            threat_models=sorted(
                models, key=lambda m: ("zero", "perfect", "limited").index(m.knowledge)
            ),
        )

    @override
    def verdict(self, result: Detection, clean_accuracy: float) -> StageVerdict:
        zero, perfect, limited = result.threat_models
        opening = (
            f"The {result.detector} detector flags {_share(zero.tpr_at_5fpr)} of the "
            f"adversarial examples of an attacker who ignores it (at {result.fpr:.0%} false "
            f"positives), "
        )
        copy = (
            f"one who fits its own copy on {limited.success_rate:.0%}"
            if limited.success_rate is not None
            else f"an attacker's own copy could not be fitted ({limited.skipped})"
        )
        adaptive = (
            f"but an attacker who knows it succeeds on {_share(perfect.success_rate)} of the "
            f"points{_distortion(perfect.distortion_ratio)}, and {copy}."
        )
        if perfect.success_rate is not None and perfect.success_rate >= _BROKEN:
            closing = "Zero-knowledge figures say nothing of its robustness: it is broken."
        else:
            closing = (
                "It held against this perfect-knowledge attack on these points: evidence "
                "against one attack, not a proof of robustness."
            )
        return StageVerdict(sentences=(opening + adaptive, closing))

    @override
    def summary(self, result: Detection) -> list[str]:
        parts = [
            f"{model.knowledge} knowledge: AUC {_plain(model.auc)}, attack succeeds "
            f"{_share(model.success_rate)}"
            for model in result.threat_models
        ]
        return [f"detect ({result.detector}): " + "; ".join(parts)]

    @override
    def key_figures(self, result: Detection, report: Report) -> list[tuple[str, str]]:
        perfect = result.threat_models[1]
        return [
            ("detector evaded (perfect knowledge)", report.percent(perfect.success_rate)),
        ]

    @override
    def report(self, result: Detection, report: Report) -> ReportSection:
        """The three threat models side by side, with the ROC curves."""
        rows = [
            (
                model.knowledge,
                model.gradient or "—",
                report.number(model.auc),
                report.percent(model.tpr_at_5fpr),
                report.percent(model.success_rate),
                report.number(model.distortion_ratio),
                f"{model.successes} / {model.attacked}" if model.skipped is None else model.skipped,
            )
            for model in result.threat_models
        ]
        header = [
            "attacker's knowledge",
            "gradient",
            "ROC AUC",
            f"TPR at {result.fpr:.0%} FPR",
            "attack succeeds",
            "distortion vs undefended",
            "successes / attacked",
        ]
        intro = (
            f"<p>{report.text(result.detector)} ({report.text(result.paper)}), threshold "
            f"set at {result.fpr:.0%} false positives on {result.clean} clean points.</p>"
        )
        return ReportSection(
            "Detecting adversarial examples", f"{intro}\n{report.table(header, rows)}", ("detect",)
        )


def _share(value: float | None) -> str:
    return "none" if value is None else f"{value:.0%}"


def _plain(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _distortion(ratio: float | None) -> str:
    return "" if ratio is None else f" with {ratio:.2g} times the undefended model's distortion"


register_stage(DetectionStage())
