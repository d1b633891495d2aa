"""The audit's ``spectra`` stage: the input Fisher and input Hessian spectra.

On the geometry sample: the Fisher information's top eigenpairs (Zhao et al. 2019, the
most dangerous directions), the Hessian of the loss by Lanczos, its trace and Frobenius
norm by Hutchinson, and its eigenvalue profile by stochastic Lanczos quadrature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, ClassVar

import torch
from typing_extensions import override

from vulnscope._statistics import finite_median, json_numbers
from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.diagnostics.hessian import input_hessian_eigenvalues, input_hessian_norms
from vulnscope.diagnostics.plots import plot_spectra
from vulnscope.diagnostics.spectral_density import input_hessian_spectrum

__all__ = ["FisherSpectrum", "HessianSpectrum", "Spectra", "SpectraStage"]

_EIGENPAIRS = 5
_FIGURE = "spectra.png"


@dataclass(frozen=True)
class FisherSpectrum:
    """Medians over the sample of the input Fisher's top eigenvalues and its trace."""

    eigenvalue_median: list[float | None]
    trace_median: float | None


@dataclass(frozen=True)
class HessianSpectrum:
    """Medians of the loss Hessian's top eigenvalues, Frobenius norm and profile."""

    eigenvalue_median: list[float | None]
    frobenius_median: float | None
    profile_median: list[float | None]


@dataclass(frozen=True)
class Spectra:
    """The record's ``spectra`` section."""

    samples: int
    fisher: FisherSpectrum
    hessian: HessianSpectrum


class SpectraStage(SampleStage[Spectra]):
    """Fisher and Hessian spectra on the geometry sample (see the module docstring)."""

    name = "spectra"
    description = "input Fisher and Hessian spectra"
    section = ("spectra",)
    piece_type = Spectra
    result_type = Spectra
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["samples", "fisher", "hessian"],
        "additionalProperties": False,
        "properties": {
            "samples": {"type": "integer", "minimum": 1},
            "fisher": {
                "type": "object",
                "required": ["eigenvalue_median", "trace_median"],
                "additionalProperties": False,
                "properties": {
                    "eigenvalue_median": {"$ref": "#/$defs/numbers"},
                    "trace_median": {"$ref": "#/$defs/number_or_null"},
                },
            },
            "hessian": {
                "type": "object",
                "required": ["eigenvalue_median", "frobenius_median", "profile_median"],
                "additionalProperties": False,
                "properties": {
                    "eigenvalue_median": {"$ref": "#/$defs/numbers"},
                    "frobenius_median": {"$ref": "#/$defs/number_or_null"},
                    "profile_median": {"$ref": "#/$defs/numbers"},
                },
            },
        },
    }
    figure_files: ClassVar[Mapping[str, str]] = {"spectra": _FIGURE}

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> Spectra:
        x, y = plan.geometry_inputs()
        model, seed, n = plan.model, plan.seed, x[0].numel()
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        fisher = input_fisher(model, x, k=min(_EIGENPAIRS, classes - 1, n), seed=seed)
        hessian = input_hessian_eigenvalues(model, x, y, k=min(_EIGENPAIRS, n), seed=seed)
        norms = input_hessian_norms(model, x, y, seed=seed)
        spectrum = input_hessian_spectrum(model, x, y, steps=min(30, n), probes=4, seed=seed)
        if plan.directory is not None:
            plot_spectra(fisher, hessian, spectrum, plan.directory / _FIGURE)
        return Spectra(
            samples=int(x.shape[0]),
            fisher=FisherSpectrum(
                eigenvalue_median=json_numbers(fisher.eigenvalues.median(0).values),
                trace_median=finite_median(fisher.trace),
            ),
            hessian=HessianSpectrum(
                eigenvalue_median=json_numbers(hessian.eigenvalues.median(0).values),
                frobenius_median=finite_median(norms.frobenius),
                profile_median=json_numbers(spectrum.profile().median(0).values),
            ),
        )

    @override
    def key_figures(self, result: Spectra, report: Report) -> list[tuple[str, str]]:
        top = result.fisher.eigenvalue_median
        return [("top Fisher eigenvalue", report.number(top[0] if top else None))]

    @override
    def report(self, result: Spectra, report: Report) -> ReportSection:
        """Top eigenvalues of the input Fisher and input Hessian (medians over samples)."""
        fisher, hessian = result.fisher, result.hessian
        summary = (
            f"<p>Medians over {report.text(result.samples)} samples. Fisher trace "
            f"{report.text(report.number(fisher.trace_median))}; Hessian Frobenius norm "
            f"{report.text(report.number(hessian.frobenius_median))}.</p>"
        )
        pairs = zip_longest(fisher.eigenvalue_median, hessian.eigenvalue_median)
        rows = [(rank, report.number(f), report.number(h)) for rank, (f, h) in enumerate(pairs, 1)]
        table = report.table(["rank", "Fisher eigenvalue", "Hessian eigenvalue"], rows)
        return ReportSection("Curvature spectra", f"{summary}\n{table}", ("spectra",))


register_stage(SpectraStage())
