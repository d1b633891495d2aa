"""NumPy ``.npz`` archives of images and labels, read without unpickling."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vulnscope.data.dataset import (
    ImageData,
    class_count,
    class_names_from,
    images_from_array,
    labels_from_array,
)
from vulnscope.errors import DataError, MissingFileError

__all__ = ["load_npz"]


def load_npz(
    path: str | Path,
    *,
    x_key: str = "x",
    y_key: str = "y",
    names_key: str = "class_names",
    num_classes: int | None = None,
) -> ImageData:
    """Load images, labels and optionally class names from an ``.npz`` archive (``numpy.savez``).

    Object arrays are refused: the archive is opened with ``allow_pickle=False``, so
    a malicious file cannot run code. Class names are therefore saved as a NumPy string
    array, e.g. ``np.savez(path, x=x, y=y, class_names=np.array(["cat", "dog"]))``.

    Args:
        path: the archive.
        x_key: name of the image array: (N, H, W), (N, C, H, W) or (N, H, W, C);
            uint8 in [0, 255] or float in [0, 1].
        y_key: name of the label array (N,), integers.
        names_key: name of the optional array of class names (K,), ``str``, label 0 first;
            when present, it sets the number of classes.
        num_classes: number of classes; default the number of class names, else
            ``max(label) + 1``.

    Returns:
        :class:`ImageData`.

    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"npz file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"{path}: is not a readable .npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array; save images and labels with np.savez")
    with archive:
        missing = [key for key in (x_key, y_key) if key not in archive.files]
        if missing:
            raise DataError(
                f"{path}: has no array named {missing[0]!r}; it holds {sorted(archive.files)}"
            )
        try:
            images, labels = archive[x_key], archive[y_key]
            stored = archive[names_key] if names_key in archive.files else None
        except ValueError as error:  # object arrays need pickle, which is refused
            raise DataError(
                f"{path}: cannot be read without unpickling ({error}); save strings as a "
                "NumPy string array, e.g. np.array(names), not as objects"
            ) from None
    x = images_from_array(images, f"{path}[{x_key}]")
    y = labels_from_array(labels, x.shape[0], f"{path}[{y_key}]")
    names = None if stored is None else class_names_from(stored, y, f"{path}[{names_key}]")
    classes = class_count(num_classes, names, y)
    return ImageData(x, y, classes, f"npz:{path}", class_names=names)
