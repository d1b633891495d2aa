"""The ``vulnscope diagnose`` job: every geometry diagnostic on a sample of a data set, to files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope import __version__
from vulnscope._io import write_json_atomic
from vulnscope._random import make_generator
from vulnscope._statistics import finite_median, json_numbers
from vulnscope._validation import check_int, check_real, check_seed
from vulnscope.data.dataset import ImageData
from vulnscope.diagnostics.curvature_bounds import curvature_bounds
from vulnscope.diagnostics.distance import class_change_distances, model_classifier
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.diagnostics.geometry import decision_boundary_section
from vulnscope.diagnostics.hessian import input_hessian_eigenvalues, input_hessian_norms
from vulnscope.diagnostics.layers import layer_amplification
from vulnscope.diagnostics.plots import (
    plot_amplification,
    plot_distances,
    plot_sections,
    plot_spectra,
)
from vulnscope.diagnostics.spectral_density import input_hessian_spectrum

__all__ = ["DIAGNOSTICS_SCHEMA_VERSION", "run_diagnostics"]

logger = logging.getLogger(__name__)

DIAGNOSTICS_SCHEMA_VERSION = 1
"""Version of the layout of ``diagnostics.json``."""

_RANDOM_DIRECTIONS = 8


def _loss_gradient(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """(N, ...) input gradient of each sample's cross-entropy at ``x`` (samples independent)."""
    inputs = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(inputs), y, reduction="none")
        (gradient,) = torch.autograd.grad(loss.sum(), inputs)
    return gradient


def _bracketed_fraction(
    lower: Tensor, upper: Tensor, measured: Tensor, correct: Tensor
) -> float | None:
    """Fraction of correct inputs whose measured distance lies between the bounds.

    How far the quadratic model of the loss can be trusted on this model.
    """
    shown = correct & torch.isfinite(measured)
    if not bool(shown.any()):
        return None
    inside = (lower[shown] <= measured[shown]) & (measured[shown] <= upper[shown])
    return float(inside.double().mean())


def run_diagnostics(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    out: str | Path,
    *,
    model_name: str = "model",
    samples: int = 64,
    k: int = 5,
    max_distance: float = 3.0,
    sections: int = 4,
    seed: int | None = 0,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every diagnostic on a random sample of ``data`` and write ``diagnostics.json``.

    Stages: the input Fisher (top k and trace), the input Hessian of the loss (top k by
    Lanczos, trace and Frobenius norm by Hutchinson, the SLQ eigenvalue profile), the
    curvature bounds on the minimal perturbation beside the smallest class-change distance
    found, class-change distances along the Fisher's v_1, the loss gradient, the Hessian's
    top eigenvector and random directions (unclipped, so the directions compare at equal
    L2 norm), layer amplification (``nn.Module`` models), and decision-boundary sections
    around the first ``sections`` sampled inputs. Figures go beside the JSON.

    Args:
        model: (N, ...) -> (N, C) logits, in eval mode.
        data: the data set to sample from.
        out: output directory (created).
        model_name: how the model is named in the record.
        samples: inputs analysed (a seeded random sample; all when larger than the data).
        k: eigenpairs of each spectrum.
        max_distance: largest L2 distance searched for a class change.
        sections: decision-boundary sections drawn.
        seed: seed of the sample, the random directions and the estimators.
        on_stage: called with each stage's name as it starts (for progress reports).

    Returns:
        The record written to ``out/diagnostics.json``.

    """
    samples = check_int(samples, "samples")
    k = check_int(k, "k")
    max_distance = check_real(max_distance, "max_distance", minimum=0.0, exclusive=True)
    sections = check_int(sections, "sections", minimum=0)
    seed = check_seed(seed)
    stage = on_stage if on_stage is not None else (lambda name: logger.info("running %s", name))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = make_generator(seed)
    chosen = torch.randperm(len(data), generator=generator)[: min(samples, len(data))]
    chosen = chosen.sort().values
    x, y = data.x[chosen], data.y[chosen]
    n = x[0].numel()
    if isinstance(model, nn.Module):
        parameter = next(model.parameters(), None)
        if parameter is not None:
            x = x.to(device=parameter.device, dtype=parameter.dtype)
            y = y.to(parameter.device)

    stage("input Fisher")
    with torch.no_grad():
        logits = model(x)
    classes = logits.shape[1]
    correct = logits.argmax(1) == y
    fisher = input_fisher(model, x, k=min(k, classes - 1, n), seed=seed)
    v1 = fisher.eigenvectors[:, 0]

    stage("input Hessian")
    hessian = input_hessian_eigenvalues(model, x, y, k=min(k, n), seed=seed)
    norms = input_hessian_norms(model, x, y, seed=seed)
    spectrum = input_hessian_spectrum(model, x, y, steps=min(30, n), probes=4, seed=seed)
    bounds = curvature_bounds(model, x, y, seed=seed)

    stage("class-change distances")
    gradient = _loss_gradient(model, x, y)
    noise = torch.randn((x.shape[0], _RANDOM_DIRECTIONS, *x.shape[1:]), generator=generator)
    directions = {
        "fisher": v1[:, None],
        "gradient": gradient[:, None],
        "hessian": hessian.eigenvectors[:, :1],
        "random": noise.to(x.dtype).to(x.device),
    }
    signed = {"fisher": True, "gradient": False, "hessian": True, "random": False}
    classify = model_classifier(model, tuple(x.shape[1:]))
    distances = {
        name: class_change_distances(
            classify, x.flatten(1), d.flatten(2), max_distance=max_distance, both_signs=signed[name]
        )
        for name, d in directions.items()
    }
    zero = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    per_sample = {
        name: torch.where(correct, d.median(1).values if name == "random" else d[:, 0], zero)
        for name, d in distances.items()
    }
    measured = torch.minimum(
        torch.minimum(per_sample["fisher"], per_sample["gradient"]), per_sample["hessian"]
    )

    record: dict[str, Any] = {
        "schema_version": DIAGNOSTICS_SCHEMA_VERSION,
        "vulnscope_version": __version__,
        "model": {"name": model_name, "classes": classes},
        "data": {
            "source": data.source,
            "samples": int(x.shape[0]),
            "indices": chosen.tolist(),
        },
        "settings": {
            "k": k,
            "max_distance": max_distance,
            "sections": sections,
            "seed": seed,
            "random_directions": _RANDOM_DIRECTIONS,
        },
        "clean_accuracy": float(correct.float().mean()),
        "fisher": {
            "method": fisher.method,
            "eigenvalues": json_numbers(fisher.eigenvalues),
            "trace": json_numbers(fisher.trace),
            "eigenvalue_median": json_numbers(fisher.eigenvalues.median(0).values),
            "trace_median": finite_median(fisher.trace),
        },
        "hessian": {
            "eigenvalues": json_numbers(hessian.eigenvalues),
            "eigenvalue_median": json_numbers(hessian.eigenvalues.median(0).values),
            "lanczos_steps": hessian.steps,
            "largest_residual": float(hessian.residuals.max()),
            "trace": json_numbers(norms.trace),
            "trace_stderr": json_numbers(norms.trace_stderr),
            "frobenius": json_numbers(norms.frobenius),
            "frobenius_stderr": json_numbers(norms.frobenius_stderr),
            "frobenius_median": finite_median(norms.frobenius),
            "profile_median": json_numbers(spectrum.profile().median(0).values),
        },
        "curvature_bounds": {
            "lower": json_numbers(bounds.lower),
            "upper": json_numbers(bounds.upper),
            "measured": json_numbers(measured),
            "top_curvature": json_numbers(bounds.top_curvature),
            "gradient_norm": json_numbers(bounds.gradient_norm),
            "measured_is": "smallest class-change distance along v_1, the gradient and u",
            "bracketed_fraction": _bracketed_fraction(
                bounds.lower, bounds.upper, measured, correct
            ),
        },
        "class_change_distance": {
            name: {
                "per_sample": json_numbers(value),
                "median": finite_median(value[correct]),
                "failed_fraction": float(
                    (~torch.isfinite(distances[name][correct])).double().mean()
                )
                if bool(correct.any())
                else None,
            }
            for name, value in per_sample.items()
        },
    }
    figures = {
        "spectra": plot_spectra(fisher, hessian, spectrum, out / "spectra.png").name,
        "distances": plot_distances(
            per_sample, bounds, measured, correct, out / "distances.png"
        ).name,
    }

    if isinstance(model, nn.Module):
        stage("layer amplification")
        amplification = layer_amplification(model, x, direction=v1, seed=seed)
        record["amplification"] = amplification.medians()
        figures["amplification"] = plot_amplification(amplification, out / "amplification.png").name

    if sections:
        stage("decision-boundary sections")
        count = min(sections, x.shape[0])
        typical = finite_median(per_sample["fisher"][correct]) if bool(correct.any()) else None
        radius = min(max_distance, 2 * typical) if typical else max_distance
        section = decision_boundary_section(model, x[:count], v1[:count], radius=radius, seed=seed)
        record["sections"] = {
            "offsets": json_numbers(section.offsets),
            "reference": section.reference.tolist(),
            "classes": section.classes.tolist(),
            "axes": ["input Fisher v_1", "random, orthogonal"],
        }
        figures["sections"] = plot_sections(section, x[:count], out / "sections.png").name
    record["figures"] = figures
    write_json_atomic(out / "diagnostics.json", record)
    return record
