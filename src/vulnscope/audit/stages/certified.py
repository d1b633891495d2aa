"""The audit's ``certified`` stage: robust accuracy bracketed from below by certificates.

Every robust accuracy the ``linf`` and ``l2`` stages report is an upper bound: an attack
that fails proves nothing. At the same budgets, on the same rows, this stage counts the
points :func:`vulnscope.certify.certify` proves robust (no input of the ball ∩ [0, 1]
box changes the class), so the report can say "robust accuracy is between X%
(certified) and Y% (attacked)".

The method (α-CROWN, CROWN or IBP: the tightest that fits the time, by a cheap size
estimate) and the MILP's exact answer on a sample of a small ReLU network are
:mod:`~vulnscope.audit.stages.certified_chunk`'s. The verdict calls a bracket at most
:data:`TIGHT` wide the robust accuracy, proved; a wider one, an attack's upper bound the
certificate cannot confirm.

Chunk ``k`` of the data is piece ``k``, as for the ``linf`` stage; the MILP sees the
chunk's share of a seeded sample of 16 points (8 in ``--quick``), its attack seeded
``seed + k``. A model the certify core cannot read (a layer it does not bound) drops
this stage with a warning naming the layer; the rest of the audit runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from typing_extensions import override

from vulnscope._plotting import new_figure, save_png
from vulnscope.audit.budgets import budget_label
from vulnscope.audit.figures import NORM_NAMES
from vulnscope.audit.settings import geometry_sample
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    Stage,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.certified_chunk import CertifiedChunk, ExactCounts, certified_chunk
from vulnscope.audit.stages.robustness import Robustness
from vulnscope.certify.graph import read_graph
from vulnscope.errors import ModelError

__all__ = ["TIGHT", "Bracket", "CertifiedResult", "CertifiedStage", "ExactSample"]

TIGHT = 0.05
"""A bracket at most this wide (5 points) settles the robust accuracy: the verdict says so."""

_EXACT = {False: (16, 2.0), True: (8, 1.0)}
"""By ``quick``: sampled points sent to the MILP, and its seconds per point."""

_EXACT_KEYS = ("certified", "verified", "falsified", "unknown")
_METHOD_NAMES = {"ibp": "IBP", "crown": "IBP + CROWN", "alpha-crown": "IBP + α-CROWN"}
"""How the report names each method (IBP runs first, the method on what it leaves)."""
_FIGURE = "certified_accuracy.png"


def _network(plan: AuditPlan) -> nn.Module:
    """The plan's model, which :meth:`CertifiedStage.applies_to` found to be a module."""
    if not isinstance(plan.model, nn.Module):
        raise NotImplementedError("the certified stage needs an nn.Module")
    return plan.model


@dataclass(frozen=True)
class Bracket:
    """At one budget: certified accuracy ≤ robust accuracy ≤ attacked accuracy."""

    eps: float
    certified: float
    attacked: float | None

    @property
    def tight(self) -> bool:
        """At most :data:`TIGHT` wide (1e-9 absorbs the rounding of a difference)."""
        return self.attacked is not None and self.attacked - self.certified <= TIGHT + 1e-9


@dataclass(frozen=True)
class ExactSample:
    """The MILP's answer on the sampled points, per L∞ budget."""

    samples: int
    seconds_per_point: float
    epsilons: list[float]
    counts: list[ExactCounts]


@dataclass(frozen=True)
class CertifiedResult:
    """The record's ``certified`` section.

    Attributes:
        method: ``"ibp"``, ``"crown"`` or ``"alpha-crown"``.
        samples: rows certified.
        brackets: by norm, per positive budget.
        exact: the MILP on a sample (None: the network is not a small ReLU network).

    """

    method: str
    samples: int
    brackets: dict[str, list[Bracket]]
    exact: ExactSample | None


_COUNTS = {"type": "integer", "minimum": 0}
_EXACT_SCHEMA = {
    "type": "object",
    "required": ["samples", "seconds_per_point", "epsilons", "counts"],
    "additionalProperties": False,
    "properties": {
        "samples": {"type": "integer", "minimum": 1},
        "seconds_per_point": {"type": "number", "exclusiveMinimum": 0},
        "epsilons": {"$ref": "#/$defs/budgets"},
        "counts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": list(_EXACT_KEYS),
                "additionalProperties": False,
                "properties": {key: _COUNTS for key in _EXACT_KEYS},
            },
        },
    },
}


def _plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float | None]]],
    path: str | Path,
    *,
    clean: float,
    method: str,
) -> Path:
    """Certified accuracy under the attacks' robust accuracy, one panel per norm.

    The robust accuracy lies between the two curves: the band between them is shaded.

    Args:
        curves: per norm, the positive budgets, the certified accuracy at each, and the
            attacked (robust) accuracy at each (None where no attack ran).
        path: where to write the PNG.
        clean: the clean accuracy, drawn at budget 0 for both curves.
        method: how the legend names the certification method.

    """
    norms = list(curves)
    figure, axes = new_figure(1, max(1, len(norms)), size=(5.5 * max(1, len(norms)), 4.0))
    for ax, norm in zip(axes[0], norms, strict=False):
        budgets, certified, attacked = curves[norm]
        epsilons = [0.0, *budgets]
        lower = [100 * clean, *(100 * value for value in certified)]
        if all(value is not None for value in attacked):
            upper = [100 * clean, *(100 * (value or 0.0) for value in attacked)]
            ax.plot(epsilons, upper, "k-o", label="attacked (cascade)")
            ax.fill_between(
                epsilons, lower, upper, color="tab:blue", alpha=0.15, label="robust accuracy"
            )
        ax.plot(epsilons, lower, "-s", color="tab:blue", label=f"certified ({method})")
        name = NORM_NAMES.get(norm, norm)
        ax.set_xlabel(f"budget ε ({name})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(f"certified and attacked accuracy, {name}")
        ax.legend()
    return save_png(figure, path)


class CertifiedStage(Stage[CertifiedChunk, CertifiedResult]):
    """Certified accuracy under the attacks' curves (see the module docstring)."""

    name = "certified"
    description = "certified accuracy (IBP, CROWN, α-CROWN; MILP on a sample)"
    section = ("certified",)
    piece_type = CertifiedChunk
    result_type = CertifiedResult
    reads = ("linf", "l2")
    tolerant = True
    budget_norms = ("linf", "l2")
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["method", "samples", "brackets", "exact"],
        "additionalProperties": False,
        "properties": {
            "method": {"enum": list(_METHOD_NAMES)},
            "samples": {"type": "integer", "minimum": 1},
            "brackets": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    norm: {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["eps", "certified", "attacked"],
                            "additionalProperties": False,
                            "properties": {
                                "eps": {"type": "number", "exclusiveMinimum": 0},
                                "certified": {"$ref": "#/$defs/fraction"},
                                "attacked": {
                                    "oneOf": [{"$ref": "#/$defs/fraction"}, {"type": "null"}],
                                    "description": "The attacks' robust accuracy (null: not run).",
                                },
                            },
                        },
                    }
                    for norm in NORM_NAMES
                },
            },
            "exact": {"oneOf": [_EXACT_SCHEMA, {"type": "null"}]},
        },
    }

    @override
    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        return None if isinstance(model, nn.Module) else "needs an nn.Module (certify reads it)"

    @staticmethod
    def _budgets(plan: AuditPlan) -> dict[str, list[float]]:
        return {norm: sorted({e for e in plan.epsilons[norm] if e > 0}) for norm in NORM_NAMES}

    @override
    def pieces(self, plan: AuditPlan) -> list[Piece]:
        budgets = self._budgets(plan)
        steps = max(1, len(budgets["linf"]) * 2 + len(budgets["l2"]))
        return [
            Piece(f"{self.name}-{index:05d}", index, start, stop, steps)
            for index, (start, stop) in enumerate(plan.chunks)
        ]

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> CertifiedChunk:
        model = _network(plan)
        x, y = plan.rows(piece.start, piece.stop)
        try:
            graph = read_graph(model, x[:8])
        except Exception as error:
            # a layer certify does not bound (ModelError, naming it) or a forward torch.fx
            # chokes on: the frame drops this stage with the reason, the audit goes on
            reason = str(error) if isinstance(error, ModelError) else repr(error)
            raise NotImplementedError(
                f"certify cannot read this {type(model).__name__}: {reason}"
            ) from None
        chosen = geometry_sample(len(plan.data), _EXACT[plan.quick][0], plan.seed)
        return certified_chunk(
            model,
            graph,
            x,
            y,
            budgets=self._budgets(plan),
            rows=len(plan.data),
            quick=plan.quick,
            sampled=[int(i) - piece.start for i in chosen if piece.start <= i < piece.stop],
            exact_seconds=_EXACT[plan.quick][1],
            seed=plan.seed + piece.index,
            on_budget=tick,
        )

    @override
    def merge(
        self, pieces: Sequence[CertifiedChunk], plan: AuditPlan, results: Mapping[str, Any]
    ) -> CertifiedResult:
        samples = sum(piece.samples for piece in pieces)
        brackets: dict[str, list[Bracket]] = {}
        for norm, budgets in self._budgets(plan).items():
            if not budgets:
                continue
            curve = results.get(norm)  # the linf and l2 stages are named after their norm
            attacked = (
                dict(zip(curve.epsilons, curve.accuracy, strict=True))
                if isinstance(curve, Robustness)
                else {}
            )
            brackets[norm] = [
                Bracket(
                    eps,
                    sum(piece.certified[norm][k] for piece in pieces) / samples,
                    attacked.get(eps),
                )
                for k, eps in enumerate(budgets)
            ]
        exact = None
        sampled = [piece for piece in pieces if piece.exact_samples]
        if sampled:
            columns = zip(*(piece.exact for piece in sampled), strict=True)
            exact = ExactSample(
                sum(piece.exact_samples for piece in sampled),
                _EXACT[plan.quick][1],
                self._budgets(plan)["linf"],
                [
                    ExactCounts(*(sum(getattr(c, key) for c in column) for key in _EXACT_KEYS))
                    for column in columns
                ],
            )
        return CertifiedResult(pieces[0].method, samples, brackets, exact)

    @override
    def warnings(self, result: CertifiedResult) -> list[str]:
        return [
            f"certified accuracy {b.certified:.1%} exceeds the attacked {b.attacked:.1%} at "
            f"{NORM_NAMES[norm]} ε = {budget_label(b.eps)}: one of the two is wrong (please "
            "report it)"
            for norm, rows in result.brackets.items()
            for b in rows
            if b.attacked is not None and b.certified > b.attacked
        ]

    @override
    def figures(
        self,
        result: CertifiedResult,
        plan: AuditPlan,
        results: Mapping[str, Any],
        clean_accuracy: float,
    ) -> dict[str, str]:
        if plan.directory is None or not result.brackets:
            return {}
        curves = {
            norm: ([b.eps for b in rows], [b.certified for b in rows], [b.attacked for b in rows])
            for norm, rows in result.brackets.items()
        }
        _plot(
            curves,
            plan.directory / _FIGURE,
            clean=clean_accuracy,
            method=_METHOD_NAMES[result.method],
        )
        return {"certified_accuracy": _FIGURE}

    def _sentence(self, norm: str, bracket: Bracket, method: str) -> str:
        where = f"At {NORM_NAMES[norm]} ε = {budget_label(bracket.eps)}"
        certified = f"{bracket.certified:.1%} (certified, {_METHOD_NAMES[method]})"
        if bracket.attacked is None:
            return f"{where}, {certified} of the inputs are proved robust."
        attacked = f"{bracket.attacked:.1%} (attacked)"
        return f"{where}, robust accuracy is between {certified} and {attacked}."

    @override
    def verdict(self, result: CertifiedResult, clean_accuracy: float) -> StageVerdict:
        sentences = []
        for norm, rows in result.brackets.items():
            middle = rows[len(rows) // 2]
            sentence = self._sentence(norm, middle, result.method)
            if middle.tight:
                sentence += " The bracket is tight, so this is the robust accuracy, proved."
            elif middle.attacked is not None:
                sentence += (
                    " The bracket is wide: the attacked figure is an upper bound that the "
                    "certificate cannot confirm."
                )
            sentences.append(sentence)
        return StageVerdict(sentences=tuple(sentences))

    @override
    def summary(self, result: CertifiedResult) -> list[str]:
        lines = [f"robust accuracy bracketed (certified by {_METHOD_NAMES[result.method]}):"]
        for norm, rows in result.brackets.items():
            for b in rows:
                attacked = "—" if b.attacked is None else f"{b.attacked:.1%} (attacked)"
                lines.append(
                    f"  {norm} eps {budget_label(b.eps)}: between {b.certified:.1%} (certified) "
                    f"and {attacked}"
                )
        if result.exact is not None:
            exact = result.exact
            for eps, c in zip(exact.epsilons, exact.counts, strict=True):
                lines.append(
                    f"  MILP on {exact.samples} sampled points, linf eps {budget_label(eps)}: "
                    f"{c.verified} verified, {c.falsified} falsified, {c.unknown} unknown"
                )
        return lines

    @override
    def key_figures(self, result: CertifiedResult, report: Report) -> list[tuple[str, str]]:
        return [
            (
                f"certified accuracy, {NORM_NAMES[norm]} ε = {budget_label(b.eps)}",
                report.percent(b.certified),
            )
            for norm, rows in result.brackets.items()
            for b in rows
        ]

    @override
    def report(self, result: CertifiedResult, report: Report) -> ReportSection:
        """The bracket per budget, and the MILP's answer on the sample."""
        method = _METHOD_NAMES[result.method]
        intro = (
            f"<p>{report.text(result.samples)} inputs certified with {report.text(method)}: "
            "the certified accuracy is a proved lower bound of the robust accuracy, the "
            "attacks' figure an upper bound; the truth lies between.</p>"
        )
        sentences = "".join(
            f"<li>{report.text(self._sentence(norm, b, result.method))}</li>"
            for norm, brackets in result.brackets.items()
            for b in brackets
        )
        body = f"{intro}\n<ul>{sentences}</ul>"
        if result.exact is not None:
            exact = result.exact
            body += (
                f"\n<p>Exact verification (MILP, at most "
                f"{report.number(exact.seconds_per_point)} s per point) of "
                f"{report.text(exact.samples)} sampled inputs:</p>\n"
                + report.table(
                    ["L∞ ε", f"certified ({method})", "verified", "falsified", "unknown"],
                    [
                        (budget_label(eps), c.certified, c.verified, c.falsified, c.unknown)
                        for eps, c in zip(exact.epsilons, exact.counts, strict=True)
                    ],
                )
            )
        return ReportSection("Certified robustness", body, ("certified_accuracy",))


register_stage(CertifiedStage())
