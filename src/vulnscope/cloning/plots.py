"""Figures of the cloning study: clone damage against the distortion legitimate users see."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vulnscope._plotting import new_figure, save_png

__all__ = ["plot_clone_damage"]

_PANELS = (
    ("clone_accuracy", "clone test accuracy"),
    ("clone_agreement", "clone agreement with the victim"),
    ("transfer_rate", "transfer rate to the victim"),
)
_STYLE = {
    "fisher": ("tab:red", "o", "Fisher poisoning"),
    "fisher_eigenvector": ("tab:pink", "P", "Fisher, eigenvector only"),
    "random": ("tab:gray", "s", "random, same L1"),
    "mad": ("tab:blue", "^", "MAD (arg-max)"),
    "reverse_sigmoid": ("tab:green", "v", "reverse sigmoid"),
    "rounding": ("tab:purple", "D", "rounding"),
    "label_only": ("black", "X", "top-1 label only"),
}


def plot_clone_damage(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row of panels per victim: clone accuracy, agreement, transfer against mean L1.

    Each defence is a line over its budgets (points at the measured mean L1 distortion,
    95% intervals over seeds both ways); the undefended clone is a horizontal band.
    """
    victims = list(dict.fromkeys(row["victim"] for row in rows))
    figure, axes = new_figure(
        len(victims), len(_PANELS), size=(4.2 * len(_PANELS), 3.4 * len(victims))
    )
    for r, victim in enumerate(victims):
        mine = [row for row in rows if row["victim"] == victim]
        for c, (metric, title) in enumerate(_PANELS):
            ax = axes[r, c]
            for row in mine:
                if row["defence"] == "none" and row[metric]["mean"] is not None:
                    low, high = row[metric]["ci_low"], row[metric]["ci_high"]
                    ax.axhline(row[metric]["mean"], color="tab:orange", lw=1.2, label="no defence")
                    if low is not None and high is not None:
                        ax.axhspan(low, high, color="tab:orange", alpha=0.15)
            for name, (color, marker, label) in _STYLE.items():
                points = sorted(
                    (
                        row
                        for row in mine
                        if row["defence"] == name and row[metric]["mean"] is not None
                    ),
                    key=lambda row: row["mean_l1"]["mean"] or 0.0,
                )
                if not points:
                    continue
                xs = [row["mean_l1"]["mean"] for row in points]
                ys = [row[metric]["mean"] for row in points]
                yerr = [row[metric]["half_width"] or 0.0 for row in points]
                xerr = [row["mean_l1"]["half_width"] or 0.0 for row in points]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=yerr,
                    xerr=xerr,
                    color=color,
                    marker=marker,
                    ms=5,
                    capsize=2,
                    lw=1.2,
                    label=label,
                )
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlabel("mean L1 distortion of published outputs")
            ax.set_title(f"{victim}: {title}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("fraction")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0, -1].legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    return save_png(figure, path)
