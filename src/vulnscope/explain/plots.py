"""Figures of the explanations (matplotlib, written as PNG files without a display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from vulnscope._plotting import new_figure, save_png
from vulnscope._validation import check_int, check_tensor, describe
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.crp import ConceptAtlas

__all__ = ["plot_concept_atlas", "plot_explanations"]

# Concepts drawn when none are chosen: the most relevant ones, at most this many.
_DEFAULT_CONCEPTS = 6


def _image(x: Tensor) -> tuple[Any, str | None]:
    """(C, H, W) in [0, 1] as an array ``imshow`` draws: grey for one channel, RGB for three."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise InvalidArgumentError(
            f"data must hold images of shape (1, H, W) or (3, H, W), got one of shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[0] == 1:
        return x[0].detach().cpu().float().numpy(), "gray"
    return x.detach().cpu().float().permute(1, 2, 0).clamp(0, 1).numpy(), None


def _chosen(atlas: ConceptAtlas, concepts: Sequence[int] | None) -> list[int]:
    channels = atlas.relevance.shape[1]
    if concepts is None:
        order = atlas.relevance.sum(0).argsort(descending=True)
        return [int(c) for c in order[:_DEFAULT_CONCEPTS]]
    chosen = [int(c) for c in concepts]
    if not chosen or any(not 0 <= c < channels for c in chosen):
        raise InvalidArgumentError(
            f"concepts must be channel indices of layer {atlas.layer!r} in [0, {channels - 1}] "
            f"(it has {channels}), got {list(concepts)!r}"
        )
    return chosen


def plot_concept_atlas(
    atlas: ConceptAtlas,
    data: Tensor | ImageData,
    path: str | Path,
    *,
    concepts: Sequence[int] | None = None,
    top: int | None = None,
) -> Path:
    """For each concept, a row of its RelMax inputs above a row of its ActMax inputs.

    Reference examples as Achtibat et al. 2023 ("From attribution maps to human-
    understandable explanations through Concept Relevance Propagation") show them: the
    inputs where the concept's relevance for the explained class is largest (RelMax) and
    those where its activation is largest (ActMax), each titled with that value.

    Args:
        atlas: from :func:`~vulnscope.explain.crp.concept_atlas`.
        data: (N, 1, H, W) or (N, 3, H, W) images in [0, 1], the ``data`` the atlas was
            computed on (one-channel images are drawn grey).
        path: the PNG file to write.
        concepts: channel indices to draw; ``None``: the (at most six) concepts with the
            largest relevance summed over ``data``.
        top: inputs per row, at most the atlas's k; ``None``: all k.

    Returns:
        The path written.

    Raises:
        InvalidArgumentError: a concept out of range, ``top`` above the atlas's k, or
            ``data`` not the atlas's inputs.

    """
    x = check_tensor(data.x if isinstance(data, ImageData) else data, "data")
    if x.ndim != 4 or x.shape[0] != atlas.relevance.shape[0]:
        raise InvalidArgumentError(
            f"data must be the atlas's {atlas.relevance.shape[0]} images, shape (N, C, H, W), "
            f"got {describe(x)}"
        )
    k = atlas.relevance_top.shape[1]
    shown = k if top is None else check_int(top, "top")
    if shown > k:
        raise InvalidArgumentError(f"top must be at most the atlas's k = {k}, got {shown}")
    chosen = _chosen(atlas, concepts)
    figure, axes = new_figure(2 * len(chosen), shown, size=(1.3 * shown + 1.0, 2.7 * len(chosen)))
    rows = (("RelMax", atlas.relevance_top, atlas.relevance),
            ("ActMax", atlas.activation_top, atlas.activation))  # fmt: skip
    for i, concept in enumerate(chosen):
        for j, (label, indices, values) in enumerate(rows):
            row = axes[2 * i + j]
            for ax, index in zip(row, indices[concept, :shown].tolist(), strict=True):
                image, cmap = _image(x[index])
                ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
                ax.set_title(f"{float(values[index, concept]):.3g}", fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(f"concept {concept}\n{label}", fontsize=8)
    figure.suptitle(f"Concept atlas of layer {atlas.layer!r}", fontsize=10)
    return save_png(figure, path)


def _show(ax: Any, image: Tensor, title: str, *, cmap: str = "gray", signed: bool = False) -> None:
    picture = image.detach().float().cpu()
    picture = (
        picture.sum(0) if picture.dim() == 3 and (signed or picture.shape[0] == 1) else picture
    )
    if signed:
        reach = float(picture.abs().max()) or 1.0
        ax.imshow(picture.numpy(), cmap="bwr", vmin=-reach, vmax=reach)
    elif picture.dim() == 3:
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())
    else:
        ax.imshow(picture.numpy(), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_explanations(
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    y_adv: Tensor,
    clean_map: Tensor,
    adversarial_map: Tensor,
    heatmap: Tensor | None,
    counterfactuals: Tensor | None,
    path: str | Path,
) -> Path:
    """The audit's explain figure: one row per point.

    Columns: the clean input and its LRP map for its class, the adversarial example and
    its LRP map for the class it gets (red: evidence for the class, blue: against), where
    the concepts the perturbation switched on act (CRP), and the counterfactual found in
    a flow's coordinates towards the same class, when there is one.

    Args:
        x: (N, C, H, W) clean inputs.
        y: (N,) their classes.
        x_adv: (N, C, H, W) adversarial examples.
        y_adv: (N,) the classes they get.
        clean_map: (N, C, H, W) LRP of ``x`` for ``y``.
        adversarial_map: (N, C, H, W) LRP of ``x_adv`` for ``y_adv``.
        heatmap: (N, C, H, W) CRP of the switched-on concepts, or None.
        counterfactuals: (N, C, H, W) or None.
        path: where the PNG goes.

    Returns:
        ``path``.

    """
    columns = 4 + (heatmap is not None) + (counterfactuals is not None)
    rows = max(1, x.shape[0])
    figure, axes = new_figure(rows, columns, size=(1.9 * columns, 2.0 * rows))
    for row in range(x.shape[0]):
        panels = [
            (x[row], f"clean → {int(y[row])}", False),
            (clean_map[row], f"LRP for {int(y[row])}", True),
            (x_adv[row], f"adversarial → {int(y_adv[row])}", False),
            (adversarial_map[row], f"LRP for {int(y_adv[row])}", True),
        ]
        if heatmap is not None:
            panels.append((heatmap[row], "switched-on concepts", True))
        if counterfactuals is not None:
            panels.append((counterfactuals[row], f"counterfactual → {int(y_adv[row])}", False))
        for column, (image, title, signed) in enumerate(panels):
            _show(axes[row, column], image, title, signed=signed)
    return save_png(figure, path)
