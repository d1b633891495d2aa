"""The audit's geometry stages: spectra, layer amplification, the dangerous perturbation.

Each runs on the same seeded sample of the data (``geometry_samples`` inputs) and
returns its record section, writing its figure when given a directory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._statistics import finite_median, json_numbers
from vulnscope.attacks import APGD
from vulnscope.audit.figures import plot_dangerous
from vulnscope.diagnostics.distance import class_change_distances, model_classifier
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.diagnostics.hessian import input_hessian_eigenvalues, input_hessian_norms
from vulnscope.diagnostics.layers import layer_amplification
from vulnscope.diagnostics.plots import plot_amplification, plot_spectra
from vulnscope.diagnostics.spectral_density import input_hessian_spectrum

__all__ = [
    "DANGEROUS_ROWS",
    "amplification_stage",
    "dangerous_stage",
    "geometry_sample",
    "spectra_stage",
]

DANGEROUS_ROWS = 6
"""Correctly classified inputs shown in the dangerous-perturbation grid."""

_EIGENPAIRS = 5
_MAX_DISTANCE = 4.0


def geometry_sample(samples: int, count: int, seed: int) -> Tensor:
    """The sorted indices of a seeded random sample of ``count`` of ``samples`` inputs."""
    chosen = torch.randperm(samples, generator=make_generator(seed))[: min(count, samples)]
    return chosen.sort().values


def spectra_stage(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, seed: int, directory: Path | None
) -> dict[str, Any]:
    """Input Fisher and input Hessian spectra on a sample (x: (B, ...), y: (B,)).

    The Fisher's top eigenpairs (Zhao et al. 2019, the most dangerous directions); the
    Hessian of the loss by Lanczos, its trace and Frobenius norm by Hutchinson, and its
    eigenvalue profile by stochastic Lanczos quadrature (the Fawzi talk).
    """
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    n = x[0].numel()
    fisher = input_fisher(model, x, k=min(_EIGENPAIRS, classes - 1, n), seed=seed)
    hessian = input_hessian_eigenvalues(model, x, y, k=min(_EIGENPAIRS, n), seed=seed)
    norms = input_hessian_norms(model, x, y, seed=seed)
    spectrum = input_hessian_spectrum(model, x, y, steps=min(30, n), probes=4, seed=seed)
    if directory is not None:
        plot_spectra(fisher, hessian, spectrum, directory / "spectra.png")
    return {
        "samples": int(x.shape[0]),
        "fisher": {
            "eigenvalue_median": json_numbers(fisher.eigenvalues.median(0).values),
            "trace_median": finite_median(fisher.trace),
        },
        "hessian": {
            "eigenvalue_median": json_numbers(hessian.eigenvalues.median(0).values),
            "frobenius_median": finite_median(norms.frobenius),
            "profile_median": json_numbers(spectrum.profile().median(0).values),
        },
    }


def amplification_stage(
    model: nn.Module, x: Tensor, *, seed: int, directory: Path | None
) -> dict[str, Any]:
    """How a small perturbation grows block by block, along the Fisher's v_1 and at random."""
    v1 = input_fisher(model, x, k=1, seed=seed).eigenvectors[:, 0]
    amplification = layer_amplification(model, x, direction=v1, seed=seed)
    if directory is not None:
        plot_amplification(amplification, directory / "amplification.png")
    return amplification.medians()


def dangerous_stage(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    seed: int,
    directory: Path | None,
    class_names: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The Fisher's v_1 and an adversarial example beside a few correctly classified inputs.

    Each input is moved along ±v_1 (the sign that changes the class first, found by a
    line search up to L2 distance 4, not clipped to the pixel range) just past the
    boundary, and attacked by APGD-CE at L∞ ``eps``.

    Returns:
        ``{"fisher_l2", "linf_eps", "rows"}``: the median L2 distance along v_1, the
        budget, and per input (each one the model classifies correctly) its index in
        ``x``, label, the classes predicted after the Fisher step and after the attack,
        the step's L2 length and the attack's L∞ size.

    """
    with torch.no_grad():
        predicted = model(x).argmax(1)
    rows = (predicted == y).nonzero()[:, 0][:DANGEROUS_ROWS]
    if rows.numel() == 0:
        return {"fisher_l2": None, "linf_eps": eps, "rows": []}
    x, y = x[rows], y[rows]
    v1 = input_fisher(model, x, k=1, seed=seed).eigenvectors[:, 0]
    flat = v1.flatten(1)
    both = torch.stack([flat, -flat], 1)
    distances = class_change_distances(
        model_classifier(model, tuple(x.shape[1:])), x.flatten(1), both,
        max_distance=_MAX_DISTANCE, both_signs=False,
    )  # fmt: skip
    sign = torch.where(distances[:, 0] <= distances[:, 1], 1.0, -1.0).to(x.dtype)
    distance = distances.min(1).values
    # just past the boundary (the line search brackets it from below)
    step = torch.where(torch.isfinite(distance), distance * 1.001, torch.zeros_like(distance))
    moved = x + (sign * step.to(x.dtype)).reshape(-1, *[1] * (x.ndim - 1)) * v1  # v1: unit L2
    attack = APGD(norm="linf", eps=eps, seed=seed)
    adversarial = attack(model, x, y).x_adv
    with torch.no_grad():
        fisher_class = model(moved).argmax(1)
        adversarial_class = model(adversarial).argmax(1)
    if directory is not None:
        plot_dangerous(
            x, v1, moved, adversarial, labels=y, fisher=fisher_class,
            adversarial=adversarial_class, distances=distance, eps=eps,
            path=directory / "dangerous.png", class_names=class_names,
        )  # fmt: skip
    linf = (adversarial - x).flatten(1).abs().amax(1)
    return {
        "fisher_l2": finite_median(distance),
        "linf_eps": eps,
        "rows": [
            {
                "index": int(index),
                "label": int(label),
                "fisher": int(f),
                "fisher_l2": float(d) if math.isfinite(float(d)) else None,
                "adversarial": int(a),
                "adversarial_linf": float(norm),
            }
            for index, label, f, d, a, norm in zip(
                rows.tolist(),
                y.tolist(),
                fisher_class.tolist(),
                distance.tolist(),
                adversarial_class.tolist(),
                linf.tolist(),
                strict=True,
            )
        ],
    }
