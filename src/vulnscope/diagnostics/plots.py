"""Figures of the geometry diagnostics (matplotlib, PNG files written without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vulnscope._plotting import new_figure, save_png
from vulnscope.diagnostics.curvature_bounds import CurvatureBounds
from vulnscope.diagnostics.fisher import FisherResult
from vulnscope.diagnostics.geometry import BoundarySection
from vulnscope.diagnostics.hessian import HessianResult
from vulnscope.diagnostics.layers import LayerAmplification
from vulnscope.diagnostics.spectral_density import SpectralDensity

__all__ = ["plot_amplification", "plot_distances", "plot_sections", "plot_spectra"]


def _np(values: Tensor) -> Any:
    """A float64 NumPy copy: matplotlib is given arrays, never tensors."""
    return values.detach().cpu().double().numpy()


def _quartiles(values: Tensor) -> tuple[Any, Any, Any]:
    q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), 0)
    return _np(q[0]), _np(q[1]), _np(q[2])


def _symlog(ax, largest: float) -> None:  # type: ignore[no-untyped-def]
    """A symmetric log scale: spectra span decades and may hold negative eigenvalues."""
    if largest > 0:
        ax.set_yscale("symlog", linthresh=largest * 1e-4)


def plot_spectra(
    fisher: FisherResult, hessian: HessianResult, spectrum: SpectralDensity, path: str | Path
) -> Path:
    """Top eigenvalues of the input Fisher and Hessian, and the Hessian's eigenvalue profile.

    The profile (eigenvalue against its rank, median over samples, from stochastic Lanczos
    quadrature) is the plot of the Fawzi talk, slide 15.
    """
    figure, axes = new_figure(1, 2, size=(11.0, 4.0))
    left, right = axes[0]
    for values, label in (
        (fisher.eigenvalues, "input Fisher"),
        (hessian.eigenvalues, "input Hessian (by |λ|)"),
    ):
        low, middle, high = _quartiles(values)
        index = _np(torch.arange(1, values.shape[1] + 1))
        left.plot(index, middle, marker="o", label=label)
        left.fill_between(index, low, high, alpha=0.25)
    _symlog(left, max(float(v.abs().max()) for v in (fisher.eigenvalues, hessian.eigenvalues)))
    left.set_xlabel("eigenvalue number")
    left.set_ylabel("eigenvalue (median, quartiles over samples)")
    left.set_title("top of the spectra")
    left.legend()
    low, middle, high = _quartiles(spectrum.profile())
    rank = _np(torch.arange(1, middle.size + 1))
    right.plot(rank, middle, color="C3")
    right.fill_between(rank, low, high, color="C3", alpha=0.25)
    right.axhline(0.0, color="grey", linewidth=0.6)
    _symlog(right, float(abs(middle).max()))
    right.set_xlabel("eigenvalue number")
    right.set_ylabel("eigenvalue")
    right.set_title("input Hessian eigenvalue profile (SLQ)")
    return save_png(figure, path)


def plot_distances(
    distances: dict[str, Tensor],
    bounds: CurvatureBounds,
    measured: Tensor,
    correct: Tensor,
    path: str | Path,
) -> Path:
    """Class-change distances by direction, and the curvature bounds beside the measured one."""
    figure, axes = new_figure(1, 2, size=(11.0, 4.0))
    left, right = axes[0]
    names = list(distances)
    finite = [_np(d[correct & torch.isfinite(d)]) for d in distances.values()]
    left.boxplot(finite, tick_labels=names)
    failed = [float((~torch.isfinite(d[correct])).double().mean()) for d in distances.values()]
    for position, fraction in enumerate(failed, start=1):
        left.annotate(
            f"{fraction:.0%} not found",
            (position, 0),
            ha="center",
            va="bottom",
            fontsize=8,
            xycoords=("data", "axes fraction"),
        )
    left.set_ylabel("L2 distance to a class change")
    left.set_title("along each direction (correctly classified inputs)")
    shown = correct & torch.isfinite(measured)
    order = measured[shown].argsort()
    rank = _np(torch.arange(order.numel()))
    right.plot(rank, _np(measured[shown][order]), "k.", label="measured (smallest found)")
    right.plot(rank, _np(bounds.lower[shown][order]), "C0_", label="lower bound (quadratic model)")
    upper = bounds.upper[shown][order]
    right.plot(
        rank,
        _np(torch.where(torch.isfinite(upper), upper, torch.nan)),
        "C3_",
        label="upper bound (quadratic model)",
    )
    right.set_yscale("log")
    right.set_xlabel("input (sorted by measured distance)")
    right.set_ylabel("L2 norm")
    right.set_title("curvature bounds (Moosavi-Dezfooli et al. 2019)")
    right.legend(fontsize=8)
    return save_png(figure, path)


def plot_amplification(amplification: LayerAmplification, path: str | Path) -> Path:
    """Top singular value by block, their running product, and the growth along v_1."""
    figure, axes = new_figure(1, 2, size=(11.0, 4.0))
    left, right = axes[0]
    blocks = _np(torch.arange(len(amplification.names)))
    sigma = _np(amplification.singular_values.median(0).values)
    left.bar(blocks, sigma, color="C0", label="σ₁ of the block's Jacobian")
    left.axhline(1.0, color="grey", linewidth=0.6)
    left.set_xticks(blocks, amplification.names, rotation=45, ha="right")
    left.set_ylabel("median over samples")
    left.set_title("amplification by block")
    left.legend()
    right.semilogy(
        blocks, _np(amplification.cumulative.median(0).values), "k--", label="product of σ₁ (bound)"
    )
    right.semilogy(
        blocks,
        _np(amplification.growth["fisher"].median(0).values),
        "C3-o",
        label="along v₁ of the input Fisher",
    )
    right.semilogy(
        blocks,
        _np(amplification.growth["random"].median(0).values),
        "C0-o",
        label="random direction, same norm",
    )
    right.set_xticks(blocks, amplification.names, rotation=45, ha="right")
    right.set_ylabel("||J v|| / ||v|| at the block's output")
    right.set_title("growth of a small perturbation with depth")
    right.legend(fontsize=8)
    return save_png(figure, path)


def plot_sections(section: BoundarySection, x: Tensor, path: str | Path) -> Path:
    """Each input beside its decision-boundary section (talk, slide 12)."""
    count = section.classes.shape[0]
    figure, axes = new_figure(2, count, size=(3.0 * count, 6.0))
    low, high = float(section.offsets[0]), float(section.offsets[-1])
    classes = int(section.classes.max()) + 1
    for column in range(count):
        image = _np(x[column])
        top = axes[0][column]
        grey = image.ndim == 3 and image.shape[0] == 1
        top.imshow(image[0] if grey else image.transpose(1, 2, 0), cmap="gray")
        top.set_title(f"class {int(section.reference[column])}")
        top.axis("off")
        ax = axes[1][column]
        ax.imshow(
            _np(section.classes[column]),
            origin="lower",
            extent=(low, high, low, high),
            cmap="tab10" if classes <= 10 else "tab20",
            vmin=0,
            vmax=max(classes - 1, 9),
            interpolation="nearest",
        )
        offsets = _np(section.offsets)
        ax.contour(
            offsets, offsets, _np(section.margins[column]), levels=[0.0], colors="k", linewidths=1.0
        )
        ax.plot([0], [0], "w+", markersize=10)
        ax.set_xlabel("along v₁ (L2)")
        if column == 0:
            ax.set_ylabel("random direction (L2)")
    return save_png(figure, path)
