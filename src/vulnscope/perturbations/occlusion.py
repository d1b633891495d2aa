"""The sliding occluder: which patch of an image, blanked out, hurts the prediction most.

Zeiler and Fergus ("Visualizing and understanding convolutional networks", ECCV 2014)
slide a grey square over the image and map the true class's probability per position;
Sharif et al. (CCS 2016) motivate patches as the perturbation that can exist physically.
:func:`occlusion_worst_case` tries every position of the patch on a stride grid, all
positions of a batch in one forward pass, and reports per point whether any position
changes the class, the worst occluded input, and the map of the probability drop.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import (
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_real,
    describe,
)
from vulnscope.attacks.losses import margin
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.checks import warn_if_training_mode
from vulnscope.models.state import preserved_model_state

__all__ = ["OcclusionResult", "occlusion_worst_case"]

_ELEMENTS_PER_BATCH = 1 << 22
"""Default chunks hold at most this many input elements of occluded images."""


@dataclass(frozen=True)
class OcclusionResult:
    """The worst occlusion of each point, and the prediction's drop at every position.

    Attributes:
        robust: (N,) bool: the clean point and every occluded version of it are classified
            as the label.
        clean_correct: (N,) bool: the clean point is classified as the label.
        x_worst: (N, C, H, W) the occluded input at ``worst_position``.
        worst_position: (N, 2) int64 top-left (row, column) of the worst patch: the one
            whose occluded input has the smallest margin (label logit minus the largest
            other), so a position that changes the class is chosen whenever one exists.
        drop_map: (N, Hp, Wp) the label's softmax probability on the clean point minus
            that on the occluded point, patch at (row ``i * stride_h``, column
            ``j * stride_w``); positive where the patch hurts.
        patch: (height, width) of the patch.
        stride: (rows, columns) between positions.

    """

    robust: Tensor
    clean_correct: Tensor
    x_worst: Tensor
    worst_position: Tensor
    drop_map: Tensor
    patch: tuple[int, int]
    stride: tuple[int, int]

    @property
    def accuracy(self) -> float:
        """The share of points robust to every position of the patch."""
        return float(self.robust.float().mean())


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1, as a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidArgumentError(
                f"{name} must be an integer or a pair (height, width), got {describe(value)}"
            )
        return check_int(value[0], f"{name}[0]"), check_int(value[1], f"{name}[1]")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = check_int(value, name)
        return size, size
    raise InvalidTypeError(
        f"{name} must be an integer or a pair (height, width), got {describe(value)}"
    )


def _fill_values(x: Tensor, fill: Any) -> Tensor:
    """The value under the patch per image and channel, (N, C, 1, 1) for ``x`` (N, C, H, W)."""
    if isinstance(fill, str):
        if fill != "mean":
            raise InvalidArgumentError(f"fill must be a number or 'mean', got {fill!r}")
        return x.mean(dim=(2, 3), keepdim=True)
    return torch.full_like(x[:, :, :1, :1], check_real(fill, "fill"))


def _positions(size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Top-left corners (P, 2) of every patch position, row-major."""
    rows = torch.arange(0, size[0] - patch[0] + 1, stride[0])
    cols = torch.arange(0, size[1] - patch[1] + 1, stride[1])
    return torch.cartesian_prod(rows, cols).reshape(-1, 2)


def _masks(
    size: tuple[int, int], patch: tuple[int, int], positions: Tensor, device: torch.device
) -> Tensor:
    """(P, 1, H, W) bool: True under the patch at each position."""
    rows = torch.arange(size[0], device=device)
    cols = torch.arange(size[1], device=device)
    top = positions[:, 0].to(device).view(-1, 1)
    left = positions[:, 1].to(device).view(-1, 1)
    in_rows = (rows >= top) & (rows < top + patch[0])
    in_cols = (cols >= left) & (cols < left + patch[1])
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def occlusion_worst_case(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    *,
    patch: int | tuple[int, int],
    stride: int | tuple[int, int],
    fill: float | str = 0.0,
    batch_size: int | None = None,
) -> OcclusionResult:
    """Slide a patch over each image and keep the position that hurts the prediction most.

    Zeiler and Fergus's occlusion sensitivity (ECCV 2014) as a worst case over positions:
    the patch (``fill`` everywhere under it, every channel) is placed with its top-left
    corner at every ``(i * stride_h, j * stride_w)`` that keeps it inside the image. The
    occluded images of several points and positions go through the model in one forward
    pass, ``batch_size`` images at a time. The model's mode flags and parameters are left
    as they were found.

    Args:
        model: maps (B, C, H, W) to logits (B, K).
        inputs: (N, C, H, W) images, floating and finite.
        labels: (N,) int64 true classes.
        patch: the patch's side, or (height, width), each between 1 and the image's.
        stride: rows and columns between positions: an integer >= 1 or a pair.
        fill: the value under the patch, or ``"mean"`` for each image's per-channel mean.
        batch_size: occluded images per forward pass (default: about 4M input elements).

    Returns:
        An :class:`OcclusionResult`; its ``drop_map`` has shape (N, Hp, Wp) with
        ``Hp = (H - patch_h) // stride_h + 1`` and likewise ``Wp``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
        >>> x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
        >>> occlusion_worst_case(model, x, y, patch=2, stride=1).drop_map.shape
        torch.Size([3, 3, 3])

    """
    model = check_model(model)
    x = check_inputs(inputs, bounds=(-math.inf, math.inf), name="inputs")
    if x.ndim != 4:
        raise InvalidArgumentError(
            f"inputs must be images of shape (N, C, H, W), got shape {tuple(x.shape)}"
        )
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    size = (int(x.shape[2]), int(x.shape[3]))
    patch_size = _pair(patch, "patch")
    if patch_size[0] > size[0] or patch_size[1] > size[1]:
        raise InvalidArgumentError(
            f"patch must fit inside the {size[0]}x{size[1]} images, "
            f"got {patch_size[0]}x{patch_size[1]}"
        )
    steps = _pair(stride, "stride")
    fill_values = _fill_values(x, fill)
    chunk = None if batch_size is None else check_int(batch_size, "batch_size")
    check_model_matches_inputs(model, x)
    positions = _positions(size, patch_size, steps)
    grid = (
        (size[0] - patch_size[0]) // steps[0] + 1,
        (size[1] - patch_size[1]) // steps[1] + 1,
    )
    masks = _masks(size, patch_size, positions, x.device)
    count, n = positions.shape[0], x.shape[0]
    images = chunk if chunk is not None else max(1, _ELEMENTS_PER_BATCH // x[0].numel())
    points = max(1, images // count)
    with preserved_model_state(model), torch.no_grad():
        warn_if_training_mode(model)
        logits = check_logits(model(x), n)
        check_labels_in_range(y, logits.shape[1], "labels")
        clean_probability = logits.softmax(1).gather(1, y.unsqueeze(1)).squeeze(1)
        margins, hits, probabilities = [], [], []
        for start in range(0, n, points):
            part, part_y = x[start : start + points], y[start : start + points]
            part_fill = fill_values[start : start + points].unsqueeze(1)
            occluded = torch.where(masks.unsqueeze(0), part_fill, part.unsqueeze(1))
            flat = occluded.flatten(0, 1)
            labels_flat = part_y.repeat_interleave(count)
            outputs = torch.cat(
                [
                    check_logits(model(flat[i : i + images]), flat[i : i + images].shape[0])
                    for i in range(0, flat.shape[0], images)
                ]
            )
            margins.append(-margin(outputs, labels_flat, None).view(-1, count))
            hits.append((outputs.argmax(1) == labels_flat).view(-1, count))
            probabilities.append(
                outputs.softmax(1).gather(1, labels_flat.unsqueeze(1)).view(-1, count)
            )
    margins_all = torch.cat(margins)
    drop = clean_probability.unsqueeze(1) - torch.cat(probabilities)
    worst = margins_all.argmin(dim=1)
    clean_correct = logits.argmax(1) == y
    robust = clean_correct & torch.cat(hits).all(dim=1)
    worst_position = positions.to(x.device)[worst]
    x_worst = torch.where(masks[worst], fill_values, x)
    return OcclusionResult(
        robust=robust,
        clean_correct=clean_correct,
        x_worst=x_worst,
        worst_position=worst_position,
        drop_map=drop.view(n, *grid),
        patch=patch_size,
        stride=steps,
    )
