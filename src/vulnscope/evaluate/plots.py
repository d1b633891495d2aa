"""Figures of the evaluation: the distribution of minimal adversarial perturbations."""

from __future__ import annotations

import math
from pathlib import Path

from vulnscope._plotting import new_figure, save_png
from vulnscope.evaluate.minimal import MinimalPerturbations

__all__ = ["plot_minimal_perturbations"]


def plot_minimal_perturbations(
    result: MinimalPerturbations, path: str | Path, *, bins: int = 20
) -> Path:
    """Histogram of the minimal perturbations found, with the median marked; a PNG file.

    The title says how many correctly classified points no attack broke (they lie
    beyond the right edge and are in no bin).

    Args:
        result: what :func:`~vulnscope.evaluate.minimal_perturbations` returned.
        path: where to write the PNG.
        bins: number of bins.

    Returns:
        The path written.

    """
    figure, axes = new_figure()
    ax = axes[0, 0]
    counts, edges = result.histogram(bins)
    if counts.size:
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.6)
    median = result.median
    if math.isfinite(median):
        ax.axvline(median, color="tab:red", lw=1.5, label=f"median {median:.3g}")
        ax.legend()
    ax.set_xlabel(f"minimal adversarial perturbation ({result.norm})")
    ax.set_ylabel("points")
    ax.set_title(
        f"{', '.join(result.attacks)}: {result.n_clean_correct} correct points, "
        f"{result.n_not_found} not broken"
    )
    return save_png(figure, path)
