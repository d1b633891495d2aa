"""A labelled batch of images, the one data type the rest of vulnscope consumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vulnscope.errors import DataError

__all__ = ["ImageData", "class_count", "class_names_from", "images_from_array", "labels_from_array"]


@dataclass(frozen=True)
class ImageData:
    """Images and their labels.

    Attributes:
        x: images, float32 of shape (N, C, H, W) with values in [0, 1].
        y: labels, int64 of shape (N,).
        num_classes: number of classes (labels lie in ``[0, num_classes)``).
        source: where the data came from, for reports.
        class_names: a name per class (``num_classes`` of them), when the data has
            them (an image folder's sub-folders, Fashion-MNIST's garments), else ``None``.

    """

    x: Tensor
    y: Tensor
    num_classes: int
    source: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.shape != (self.x.shape[0],):
            raise DataError(
                f"{self.source}: expected images (N, C, H, W) and labels (N,), got "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.source}: expected a class name per class ({self.num_classes}), got "
                f"{len(self.class_names)} names"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, count: int) -> ImageData:
        """The first ``count`` samples."""
        return ImageData(
            self.x[:count], self.y[:count], self.num_classes, self.source, self.class_names
        )


def images_from_array(array: np.ndarray, source: str) -> Tensor:
    """Convert an image array to float32 (N, C, H, W) in [0, 1].

    Accepts (N, H, W) grey images, (N, C, H, W), or channels-last (N, H, W, C) with
    C in {1, 3}. Integer images must lie in [0, 255] and are divided by 255; float
    images must already lie in [0, 1].
    """
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = np.moveaxis(array, -1, 1)
    elif array.ndim != 4:
        raise DataError(
            f"{source}: images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C), "
            f"got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise DataError(f"{source}: holds no images")
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise DataError(
                f"{source}: integer images must lie in [0, 255], got [{array.min()}, {array.max()}]"
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{source}: images must be numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DataError(f"{source}: images hold NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise DataError(
            f"{source}: float images must lie in [0, 1], got [{array.min():.4g}, "
            f"{array.max():.4g}]; divide by 255 (or by the maximum) before saving"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def labels_from_array(array: np.ndarray, count: int, source: str) -> Tensor:
    """Convert a label array to int64 (N,), checking it matches ``count`` images."""
    array = np.asarray(array)
    if array.ndim == 2 and 1 in array.shape:  # a column or row vector
        array = array.reshape(-1)
    if array.ndim != 1 or array.shape[0] != count:
        raise DataError(
            f"{source}: expected {count} labels (one per image) in a 1-D array, "
            f"got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {array.dtype}")
    if array.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, got {array.min()}")
    return torch.from_numpy(array.astype(np.int64))


def class_names_from(names: object, labels: Tensor, source: str) -> tuple[str, ...]:
    """Check class names given beside labels: non-empty strings, one per class at least.

    Args:
        names: a sequence of strings, or a 1-D NumPy array of ``str`` (or UTF-8 ``bytes``).
        labels: the labels (N,) the names are for; each must index a name.
        source: the data's name, for error messages.

    Returns:
        The names as a tuple of ``str``.

    """
    if isinstance(names, np.ndarray):
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(
                f"{source}: class names must be a 1-D array of strings, got an array of "
                f"dtype {names.dtype} and shape {names.shape}"
            )
        names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DataError(f"{source}: class names must be a sequence of strings, got {names!r}")
    if not all(isinstance(name, str) and name for name in names):
        raise DataError(f"{source}: class names must be non-empty strings, got {list(names)!r}")
    if len(labels) and int(labels.max()) >= len(names):
        raise DataError(
            f"{source}: label {int(labels.max())} has no class name ({len(names)} names given)"
        )
    return tuple(names)


def class_count(num_classes: int | None, names: tuple[str, ...] | None, labels: Tensor) -> int:
    """``num_classes`` if given, else the number of ``names``, else ``max(labels) + 1``."""
    if num_classes is not None:
        return num_classes
    return len(names) if names is not None else int(labels.max()) + 1
