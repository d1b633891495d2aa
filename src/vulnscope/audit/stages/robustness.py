"""Robust accuracy under the attack cascade, as an audit stage for one norm.

Croce and Hein (2020): AutoAttack's cascade (APGD-CE, APGD-T, FAB-T, Square by default),
each attack run only on the points the ones before it left robust, then the
gradient-masking checks; by default scheduled adaptively (Liu et al. 2022, A³:
:func:`~vulnscope.evaluate.adaptive_chunk`, which skips certified points), or as
AutoAttack runs it (``evaluation="standard"``, :func:`~vulnscope.evaluate.cascade_chunk`).
The data is cut into chunks by sample index (chunk ``k`` seeded ``seed + k``); each chunk
is a piece whose counts add up across chunks, so the curve is the same whichever rank
computed which chunk. :mod:`~vulnscope.audit.stages.linf` and
:mod:`~vulnscope.audit.stages.l2` register one stage each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from typing_extensions import override

from vulnscope.audit.budgets import budget_label
from vulnscope.audit.codec import IN_MEMORY, from_json
from vulnscope.audit.figures import NORM_NAMES, plot_robust_accuracy
from vulnscope.audit.stage import AuditPlan, Piece, Report, ReportSection, Stage, StageVerdict
from vulnscope.evaluate import CascadeChunk, adaptive_chunk, cascade_chunk, merge_cascade_chunks

__all__ = ["Robustness", "RobustnessStage"]


@dataclass(frozen=True)
class Evaluation:
    """The cascade at one budget, over the whole data (``StandardEvaluation.to_dict``'s layout).

    Attributes:
        norm: the threat model's norm.
        eps: the budget.
        robust_accuracy: fraction classified correctly and broken by no attack.
        clean_accuracy: fraction classified correctly without perturbation.
        broken_by: points broken per attack (``"clean"``: misclassified already).
        stages: what each attack of the cascade did (without its time).
        checks: each gradient-masking check, and whether it fired.
        warnings: the messages of the checks that fired.
        certified: points a certificate proved robust, so not attacked (the adaptive
            evaluation; None when no certificate was tried).

    """

    norm: str
    eps: float
    robust_accuracy: float
    clean_accuracy: float
    broken_by: dict[str, int]
    stages: list[dict[str, Any]]
    checks: dict[str, bool]
    warnings: list[str]
    certified: int | None = None


@dataclass(frozen=True)
class Robustness:
    """The robust-accuracy curve of one norm: the record's ``robustness[norm]``.

    Attributes:
        epsilons: the budgets as given (0 allowed: clean accuracy).
        accuracy: robust accuracy at each.
        evaluations: the cascade at each positive budget.
        attack_seconds: per budget (``f"{eps:g}"``), seconds per attack.
        norm: the norm (in memory; the record's key says it).

    """

    epsilons: list[float]
    accuracy: list[float]
    evaluations: list[Evaluation]
    attack_seconds: dict[str, dict[str, float]]
    norm: str = field(default="", metadata=IN_MEMORY)

    @property
    def reference(self) -> tuple[float, float] | None:
        """The middle positive budget and the robust accuracy there."""
        pairs = [(e, a) for e, a in zip(self.epsilons, self.accuracy, strict=True) if e > 0]
        return pairs[len(pairs) // 2] if pairs else None


class RobustnessStage(Stage[CascadeChunk, Robustness]):
    """The cascade's robust-accuracy curve under one norm (see the module docstring)."""

    section: ClassVar[tuple[str, ...]]
    piece_type = CascadeChunk
    result_type = Robustness
    schema: ClassVar[Mapping[str, Any]] = {"$ref": "#/$defs/curve"}
    norm: ClassVar[str]

    @property
    def _label(self) -> str:
        return NORM_NAMES.get(self.norm, self.norm)

    def _positive(self, plan: AuditPlan) -> list[float]:
        return sorted({eps for eps in plan.epsilons[self.norm] if eps > 0})

    @override
    def pieces(self, plan: AuditPlan) -> list[Piece]:
        steps = max(1, len(self._positive(plan)))
        return [
            Piece(f"{self.name}-{index:05d}", index, start, stop, steps)
            for index, (start, stop) in enumerate(plan.chunks)
        ]

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> CascadeChunk:
        x, y = plan.rows(piece.start, piece.stop)
        run = adaptive_chunk if plan.evaluation == "adaptive" else cascade_chunk
        return run(
            plan.model,
            x,
            y,
            norm=self.norm,
            epsilons=self._positive(plan),
            seed=plan.seed + piece.index,
            attacks=plan.attacks,
            on_budget=lambda _: tick(),
        )

    @override
    def merge(
        self, pieces: Sequence[CascadeChunk], plan: AuditPlan, results: Mapping[str, Any]
    ) -> Robustness:
        clean = sum(piece.correct for piece in pieces) / sum(piece.samples for piece in pieces)
        curve = merge_cascade_chunks(pieces)
        by_eps = {evaluation.eps: evaluation for evaluation in curve.evaluations}
        budgets = list(plan.epsilons[self.norm])
        return Robustness(
            epsilons=budgets,
            accuracy=[by_eps[eps].robust_accuracy if eps > 0 else clean for eps in budgets],
            evaluations=[
                self.decode_evaluation(by_eps[eps].to_dict()) for eps in budgets if eps > 0
            ],
            attack_seconds={
                f"{e.eps:g}": {stage.name: round(stage.seconds, 3) for stage in e.stages}
                for e in curve.evaluations
            },
            norm=self.norm,
        )

    @override
    def decode_result(self, data: Any) -> Robustness:
        return dataclasses.replace(super().decode_result(data), norm=self.norm)

    def decode_evaluation(self, data: Any) -> Evaluation:
        """One merged evaluation read into its dataclass."""
        return from_json(Evaluation, data, where=f"{self.name} evaluation")

    @override
    def warnings(self, result: Robustness) -> list[str]:
        found: list[str] = []
        for evaluation in result.evaluations:
            found += [text for text in evaluation.warnings if text not in found]
        return found

    @override
    def figures(
        self,
        result: Robustness,
        plan: AuditPlan,
        results: Mapping[str, Any],
        clean_accuracy: float,
    ) -> dict[str, str]:
        """One figure for every norm's curve (each robustness stage redraws it whole)."""
        if plan.directory is None:
            return {}
        curves = {
            value.norm or name: (value.epsilons, value.accuracy)
            for name, value in results.items()
            if isinstance(value, Robustness)
        }
        curves[self.norm] = (result.epsilons, result.accuracy)
        name = "robust_accuracy.png"
        plot_robust_accuracy(curves, plan.directory / name, clean=clean_accuracy)
        return {"robust_accuracy": name}

    @override
    def verdict(self, result: Robustness, clean_accuracy: float) -> StageVerdict:
        reference = result.reference
        fired = sorted({name for e in result.evaluations for name, on in e.checks.items() if on})
        return StageVerdict(
            reference=None if reference is None else (self._label, *reference),
            masking=tuple(fired),
        )

    @override
    def summary(self, result: Robustness) -> list[str]:
        names = _attacks(result)
        lines = [
            f"robust accuracy ({self.norm}) and the points each attack broke:",
            "  " + f"{'eps':>8}{'robust':>9}" + "".join(f"{name:>10}" for name in names),
        ]
        by_eps = {evaluation.eps: evaluation for evaluation in result.evaluations}
        for eps, robust in zip(result.epsilons, result.accuracy, strict=True):
            broken = by_eps[eps].broken_by if eps in by_eps else {}
            cells = "".join(f"{broken.get(name, 0):>10}" for name in names)
            lines.append("  " + f"{budget_label(eps):>8}{robust:>9.1%}" + cells)
        certified = [(e.eps, e.certified) for e in result.evaluations if e.certified]
        if certified:
            counts = ", ".join(f"{count} at {budget_label(eps)}" for eps, count in certified)
            lines.append(f"  certified first, so not attacked: {counts}")
        return lines

    @override
    def key_figures(self, result: Robustness, report: Report) -> list[tuple[str, str]]:
        label = self._label
        return [
            (f"robust accuracy, {label} ε = {budget_label(eps)}", report.percent(accuracy))
            for eps, accuracy in zip(result.epsilons, result.accuracy, strict=True)
            if eps > 0  # at eps 0 the curve repeats the clean accuracy
        ]

    @override
    def report(self, result: Robustness, report: Report) -> ReportSection:
        """Robust accuracy per budget and which attack broke how many points."""
        attacks = _attacks(result)
        by_eps = {evaluation.eps: evaluation for evaluation in result.evaluations}
        certifies = any(e.certified is not None for e in result.evaluations)
        rows = []
        for eps, accuracy in zip(result.epsilons, result.accuracy, strict=True):
            broken = by_eps[eps].broken_by if eps in by_eps else None
            counts = [  # an attack that ran at this budget and broke nothing broke 0
                report.number(broken.get(a, 0)) if broken is not None else "—" for a in attacks
            ]
            row = [budget_label(eps), report.percent(accuracy), *counts]
            if certifies:
                done = by_eps[eps].certified if eps in by_eps else None
                row.append(report.number(done) if done is not None else "—")
            rows.append(row)
        header = ["ε", "robust accuracy", *(f"broken by {attack}" for attack in attacks)]
        if certifies:
            header.append("certified (not attacked)")
        label = self._label
        notes = tuple(
            (warning, f"{label} ε = {budget_label(evaluation.eps)}")
            for evaluation in result.evaluations
            for warning in evaluation.warnings
        )
        body = f"<h3>{report.text(label)} budgets</h3>\n{report.table(header, rows)}"
        return ReportSection("Robust accuracy", body, ("robust_accuracy",), notes)


def _attacks(result: Robustness) -> list[str]:
    """The cascade's attacks, in order, as the evaluations name them."""
    return list(dict.fromkeys(stage["name"] for e in result.evaluations for stage in e.stages))
