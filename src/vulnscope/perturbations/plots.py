"""The figure of the perturbations beyond the Lp ball: one page, four views.

The top row: accuracy against the rotation (no translation), accuracy over the
translations (no rotation), and the noise-to-adversarial ratios beside Fawzi et al.'s
predictions. Below it, one row per example point: the clean input, its worst
transformation on the grid, the occlusion map (the drop of the label's probability per
patch position) and the worst occluded input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vulnscope._plotting import new_figure, save_png
from vulnscope.perturbations.noise import NoiseRobustness
from vulnscope.perturbations.occlusion import OcclusionResult
from vulnscope.perturbations.spatial import TransformResult

__all__ = ["plot_beyond_lp", "rotation_accuracy", "translation_accuracy"]


def rotation_accuracy(result: TransformResult) -> tuple[list[float], list[float]]:
    """``(angles, accuracy)`` at each rotation of the grid with no translation, scale 1.

    Args:
        result: a grid search's result (``grid`` and ``grid_accuracy`` set).

    Returns:
        The rotations in increasing order and the accuracy at each (empty lists when the
        grid has no untranslated, unscaled transformation).

    """
    grid, accuracy = _grid(result)
    keep = (grid[:, 1] == 0) & (grid[:, 2] == 0) & (grid[:, 3] == 1)
    angles, order = grid[keep, 0].sort()
    return [float(a) for a in angles], [float(a) for a in accuracy[keep][order]]


def translation_accuracy(result: TransformResult) -> tuple[list[float], Tensor]:
    """``(offsets, accuracy)``: accuracy (T, T) at each (dy, dx) with no rotation, scale 1.

    Args:
        result: a grid search's result (``grid`` and ``grid_accuracy`` set).

    Returns:
        The translations in increasing order, and the accuracy with rows indexed by dy
        and columns by dx (NaN where the grid lacks the pair).

    """
    grid, accuracy = _grid(result)
    keep = (grid[:, 0] == 0) & (grid[:, 3] == 1)
    offsets = sorted({float(v) for v in grid[keep, 1]} | {float(v) for v in grid[keep, 2]})
    table = torch.full((len(offsets), len(offsets)), float("nan"), dtype=torch.float64)
    for row, value in zip(grid[keep], accuracy[keep], strict=True):
        table[offsets.index(float(row[2])), offsets.index(float(row[1]))] = float(value)
    return offsets, table


def _grid(result: TransformResult) -> tuple[Tensor, Tensor]:
    if result.grid is None or result.grid_accuracy is None:
        raise ValueError("the result holds no grid accuracy (a random or first-order search)")
    return result.grid.double().cpu(), result.grid_accuracy.double().cpu()


def _image(ax: Any, image: Tensor, title: str) -> None:
    picture = image.detach().float().cpu()
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_beyond_lp(
    spatial: TransformResult,
    noise: Sequence[NoiseRobustness],
    occlusion: OcclusionResult,
    inputs: Tensor,
    predictions: dict[str, Tensor],
    path: str | Path,
    *,
    examples: int = 3,
) -> Path:
    """Draw the figure (see the module docstring) and write it to ``path`` as a PNG.

    Args:
        spatial: the grid search on the points ``inputs``.
        noise: the random and semi-random noise measures on the same points.
        occlusion: the occlusion search on the same points.
        inputs: (N, C, H, W) the clean points.
        predictions: (N,) predicted classes: ``"clean"``, ``"spatial"`` (at the worst
            transformation) and ``"occlusion"`` (at the worst patch).
        path: where the PNG goes.
        examples: how many points get a row: those a patch hurts most.

    Returns:
        ``path``.

    """
    hurt = occlusion.drop_map.flatten(1).amax(dim=1).cpu()
    hurt[~occlusion.clean_correct.cpu()] = -1.0
    chosen = hurt.argsort(descending=True, stable=True)[: min(examples, inputs.shape[0])].tolist()
    figure, axes = new_figure(1 + len(chosen), 4, size=(10.0, 2.3 * (1 + len(chosen))))

    angles, accuracy = rotation_accuracy(spatial)
    axes[0, 0].plot(angles, [100 * a for a in accuracy], marker="o")
    axes[0, 0].set(xlabel="rotation (degrees)", ylabel="accuracy (%)", ylim=(0, 101))
    axes[0, 0].set_title("no translation", fontsize=9)

    offsets, table = translation_accuracy(spatial)
    shown = axes[0, 1].imshow(100 * table.numpy(), vmin=0, vmax=100, cmap="viridis")
    ticks = list(range(len(offsets)))
    labels = [f"{v:g}" for v in offsets]
    axes[0, 1].set(xticks=ticks, yticks=ticks, xlabel="dx (px)", ylabel="dy (px)")
    axes[0, 1].set_xticklabels(labels)
    axes[0, 1].set_yticklabels(labels)
    axes[0, 1].set_title("accuracy (%), no rotation", fontsize=9)
    figure.colorbar(shown, ax=axes[0, 1], fraction=0.046)

    names = ["random" if m.subspace_dim is None else f"m={m.subspace_dim}" for m in noise]
    positions = list(range(len(noise)))
    measured = [m.median_ratio for m in noise]
    axes[0, 2].bar(positions, measured, label="measured (median)")
    axes[0, 2].scatter(
        positions,
        [m.predicted for m in noise],
        marker="_",
        s=400,
        color="C3",
        zorder=3,
        label="√d, √(d/m)",
    )
    top = max([m.predicted for m in noise] + [v for v in measured if math.isfinite(v)])
    axes[0, 2].set(xticks=positions, ylabel="noise / adversarial L2", ylim=(0, 1.25 * top))
    axes[0, 2].set_xticklabels(names, fontsize=7)
    axes[0, 2].legend(fontsize=7, loc="upper right")
    axes[0, 2].set_title("random and semi-random noise", fontsize=9)

    axes[0, 3].axis("off")
    h, w = occlusion.patch
    axes[0, 3].text(
        0.0,
        0.5,
        f"worst-case accuracy\nspatial grid: {100 * spatial.accuracy:.1f}%\n"
        f"{h}×{w} patch: {100 * occlusion.accuracy:.1f}%\n"
        f"clean: {100 * float(spatial.clean_correct.float().mean()):.1f}%",
        fontsize=9,
        va="center",
    )

    for row, index in enumerate(chosen, start=1):
        r, dx, dy, _ = (float(v) for v in spatial.worst_params[index])
        _image(axes[row, 0], inputs[index], f"clean → {int(predictions['clean'][index])}")
        _image(
            axes[row, 1],
            spatial.x_worst[index],
            f"{r:+.0f}°, ({dx:+g}, {dy:+g}) px → {int(predictions['spatial'][index])}",
        )
        drop = axes[row, 2].imshow(
            occlusion.drop_map[index].float().cpu().numpy(), cmap="magma", vmin=0, vmax=1
        )
        axes[row, 2].set_title("probability drop per patch", fontsize=8)
        axes[row, 2].set_xticks([])
        axes[row, 2].set_yticks([])
        figure.colorbar(drop, ax=axes[row, 2], fraction=0.046)
        _image(
            axes[row, 3],
            occlusion.x_worst[index],
            f"worst patch → {int(predictions['occlusion'][index])}",
        )
    return save_png(figure, path)
