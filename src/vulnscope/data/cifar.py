"""CIFAR-10's binary version (Krizhevsky, 2009), read without unpickling.

The archive ``cifar-10-binary.tar.gz`` holds ``data_batch_1.bin`` ... ``data_batch_5.bin``
(the 50,000 training images) and ``test_batch.bin`` (10,000). Each record is 3073 bytes:
the label (one byte, 0..9), then the 32x32 image as 1024 red, 1024 green and 1024 blue
bytes, each plane row by row. (The "python version" of the archive is pickled, which
vulnscope does not read.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vulnscope.data.dataset import ImageData, images_from_array
from vulnscope.errors import DataError, MissingFileError

__all__ = ["CIFAR10_CLASSES", "load_cifar10_binary"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""CIFAR-10's class names, label 0 first (as in the archive's ``batches.meta.txt``)."""

_SIDE = 32
_RECORD = 1 + 3 * _SIDE * _SIDE


def load_cifar10_binary(files: Sequence[str | Path], *, source: str | None = None) -> ImageData:
    """Load CIFAR-10 batch files of the binary version, concatenated in the given order.

    Args:
        files: ``.bin`` batch files, e.g. ``[".../test_batch.bin"]``.
        source: how the data names itself in reports (default ``"cifar10-bin:<first file>"``).

    Returns:
        :class:`ImageData` with ``x`` (N, 3, 32, 32) float32 in [0, 1] (bytes divided by
        255), ``y`` (N,) in 0..9, and :data:`CIFAR10_CLASSES` as class names.

    """
    if not files:
        raise DataError("files: expected at least one CIFAR-10 batch file, got none")
    records = []
    for file in map(Path, files):
        if not file.is_file():
            raise MissingFileError(f"CIFAR-10 batch file {str(file)!r} does not exist")
        raw = np.frombuffer(file.read_bytes(), dtype=np.uint8)
        if raw.size == 0 or raw.size % _RECORD:
            raise DataError(
                f"{file}: is not a CIFAR-10 binary batch ({raw.size} bytes is not a "
                f"positive multiple of the {_RECORD}-byte record)"
            )
        records.append(raw.reshape(-1, _RECORD))
    table = np.concatenate(records)
    labels = table[:, 0]
    if labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(f"{files[0]}: holds label {labels.max()}; CIFAR-10 labels are 0..9")
    images = table[:, 1:].reshape(-1, 3, _SIDE, _SIDE)
    return ImageData(
        images_from_array(images, str(files[0])),
        torch.from_numpy(labels.astype(np.int64)),
        len(CIFAR10_CLASSES),
        source or f"cifar10-bin:{files[0]}",
        class_names=CIFAR10_CLASSES,
    )
