"""Figures of the RG analysis (matplotlib, written as PNG files without a display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vulnscope._plotting import new_figure, save_png
from vulnscope.rg.study import DepthStudy, RGReport

__all__ = ["plot_depth_study", "plot_directions", "plot_layers"]


def plot_layers(report: RGReport, path: str | Path) -> Path:
    """Leading |eigenvalue| (hidden layers) and singular value (label layer) by layer."""
    figure, axes = new_figure(size=(6.0, 4.0))
    ax = axes[0][0]
    layers = list(range(2, report.depth + 1))
    rows = report.layer_summary()
    for key, label in (
        ("leading_mean", "leading |λ| (label layer: σ₁)"),
        ("singular_mean", "leading singular value"),
    ):
        ax.errorbar(
            layers,
            [row[key] for row in rows],
            yerr=[row["leading_stderr_over_inputs"] for row in rows]
            if key == "leading_mean"
            else None,
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="|λ| = 1")
    ax.set_xlabel("layer k (T^(k) = ∂g^(k)/∂g^(k-1))")
    ax.set_ylabel("magnitude (mean over inputs)")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_title(f"Stability matrices, depth {report.depth}, {len(report.operators)} operators")
    ax.legend(fontsize=8)
    return save_png(figure, path)


def plot_depth_study(study: DepthStudy | Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Leading eigenvalue per layer, ||P|| and class-change distances against depth.

    ``study`` is a :class:`DepthStudy` or its rows (``DepthStudy.to_dict()["rows"]``, as a
    checkpoint or ``rg.json`` holds them).
    """
    figure, axes = new_figure(1, 3, size=(14.0, 4.0))
    rows = study.to_dict()["rows"] if isinstance(study, DepthStudy) else list(study)
    depths = [row["depth"] for row in rows]
    ax = axes[0][0]
    for row in rows:
        values = row["leading_per_layer"][:-1]
        if values:
            ax.plot(range(2, 2 + len(values)), values, marker="o", label=f"N = {row['depth']}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("hidden layer k")
    ax.set_ylabel("leading |λ| of T^(k)")
    ax.set_title("Hidden-layer stability by depth")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.errorbar(
        depths,
        [row["product_norm_mean"] for row in rows],
        yerr=[row["product_norm_stderr"] for row in rows],
        marker="o",
        capsize=3,
    )
    ax.set_xlabel("depth N")
    ax.set_ylabel("||T^(N) ⋯ T^(2)||₂ (mean over inputs)")
    ax.set_title("Amplification across the network")
    ax = axes[0][2]
    for name in ("fisher", "gradient", "random"):
        values = [row["class_change_distance_median"][name] for row in rows]
        ax.plot(
            depths,
            [math.nan if v is None else v for v in values],
            marker="o",
            label={
                "fisher": "along v₁ (RG Fisher)",
                "gradient": "mean-field gradient",
                "random": "random",
            }[name],
        )
    ax.set_xlabel("depth N")
    ax.set_ylabel("median L2 distance to a class change")
    ax.set_title("How far the input must move")
    ax.legend(fontsize=8)
    return save_png(figure, path)


def plot_directions(report: RGReport, x: torch.Tensor, path: str | Path, *, count: int = 6) -> Path:
    """Inputs, their dangerous direction v₁, and the input moved to its class change."""
    count = min(count, report.labels.numel())
    side = math.isqrt(x[0].numel())
    figure, axes = new_figure(3, count, size=(2.2 * count, 6.0))
    for column in range(count):
        image = x[int(report.indices[column])].reshape(-1).double()
        vector = float(report.fisher_sign[column]) * report.fisher_eigenvectors[column, 0].double()
        distance = float(report.distances["fisher"][column])
        step = distance if math.isfinite(distance) else 0.0
        moved = image + step * vector
        predicted = int(report.predictions[column])
        label = int(report.labels[column])
        panels = (
            (image, f"label {label}, network {predicted}"),
            (vector, "dangerous direction v₁"),
            (moved, f"+{step:.2f}·v₁: class changes"),
        )
        for row, (panel, title) in enumerate(panels):
            ax = axes[row][column]
            shown = panel.reshape(side, side) if side * side == panel.numel() else panel[None]
            if row == 1:
                limit = float(panel.abs().max())
                ax.imshow(shown.numpy(), cmap="RdBu", vmin=-limit, vmax=limit)
            else:  # the same intensity scale as the input: is the change visible?
                ax.imshow(shown.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    return save_png(figure, path)
