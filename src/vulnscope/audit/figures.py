"""Figures of the audit that no single diagnostic draws.

The robust-accuracy curves and the image grid of the dangerous perturbation (matplotlib,
PNG files written atomically).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vulnscope._plotting import new_figure, save_png

__all__ = ["NORM_NAMES", "plot_dangerous", "plot_robust_accuracy"]

NORM_NAMES = {"linf": "L∞", "l2": "L2"}
"""How the figures, the report and the verdict write each norm."""


def plot_robust_accuracy(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    clean: float | None = None,
) -> Path:
    """Robust accuracy against the budget, one panel per norm.

    Args:
        curves: per norm, the budgets and the robust accuracy at each.
        path: where to write the PNG.
        clean: the clean accuracy, drawn at budget 0 when the curve does not hold it.

    """
    norms = list(curves)
    figure, axes = new_figure(1, max(1, len(norms)), size=(5.5 * max(1, len(norms)), 4.0))
    for ax, norm in zip(axes[0], norms, strict=False):
        epsilons, accuracy = list(curves[norm][0]), list(curves[norm][1])
        if clean is not None and 0.0 not in epsilons:
            epsilons, accuracy = [0.0, *epsilons], [clean, *accuracy]
        ax.plot(epsilons, [100 * a for a in accuracy], "k-o", label="robust (cascade)")
        ax.set_xlabel(f"budget ε ({NORM_NAMES.get(norm, norm)})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(f"robust accuracy, {NORM_NAMES.get(norm, norm)}")
        ax.legend()
    return save_png(figure, path)


def _image(x: Tensor) -> Any:
    """One input (C, H, W), (H, W) or (n,) as something ``imshow`` draws."""
    array = x.detach().cpu().double().numpy()
    if array.ndim == 3:
        array = array.transpose(1, 2, 0) if array.shape[0] == 3 else array[0]
    elif array.ndim == 1:
        side = int(np.sqrt(array.size))
        array = array.reshape(side, -1) if side * side == array.size else array[None, :]
    return array


def plot_dangerous(
    x: Tensor,
    direction: Tensor,
    moved: Tensor,
    attacked: Tensor,
    *,
    labels: Tensor,
    fisher: Tensor,
    adversarial: Tensor,
    distances: Tensor,
    eps: float,
    path: str | Path,
    class_names: tuple[str, ...] | None = None,
) -> Path:
    """Rows of: the input, the Fisher's v_1, the input moved along it, an adversarial example.

    Args:
        x: (B, ...) inputs.
        direction: (B, ...) unit Fisher eigenvectors v_1.
        moved: (B, ...) the inputs moved along ±v_1 just past the boundary.
        attacked: (B, ...) adversarial examples.
        labels: (B,) true classes.
        fisher: (B,) classes predicted after the Fisher step.
        adversarial: (B,) classes predicted after the attack.
        distances: (B,) L2 length of the Fisher step (inf: none found).
        eps: the attack's L∞ budget.
        path: where to write the PNG.
        class_names: names of the classes (default: their numbers).

    """

    def name(index: int) -> str:
        return class_names[index] if class_names is not None else str(index)

    rows = x.shape[0]
    figure, axes = new_figure(rows, 5, size=(10.0, 2.1 * rows))
    titles = ("input", "Fisher v₁", "input + t·v₁", "adversarial", "adversarial − input")
    for row in range(rows):
        label = name(int(labels[row]))
        shift = float(distances[row])
        cells = (
            (_image(x[row]), f"class {label}", "gray"),
            (_image(direction[row]), "most dangerous direction", "RdBu_r"),
            (
                _image(moved[row]),
                f"t = {shift:.2f} → {name(int(fisher[row]))}"
                if np.isfinite(shift)
                else "no change within L2 4",
                "gray",
            ),
            (_image(attacked[row]), f"L∞ {eps:g} → {name(int(adversarial[row]))}", "gray"),
            (_image(attacked[row] - x[row]), "perturbation", "RdBu_r"),
        )
        for column, (image, caption, colours) in enumerate(cells):
            ax = axes[row, column]
            if colours == "gray":
                ax.imshow(np.clip(image, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                limit = float(np.abs(image).max()) or 1.0
                ax.imshow(
                    image if image.ndim == 2 else image.mean(-1),
                    cmap=colours,
                    vmin=-limit,
                    vmax=limit,
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=8)
            if row == 0:
                ax.set_title(titles[column], fontsize=9)
    return save_png(figure, path)
