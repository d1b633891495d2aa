"""NumPy ``.npz`` archives of images and labels, read without unpickling."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vulnscope.data.dataset import ImageData, images_from_array, labels_from_array
from vulnscope.errors import DataError, MissingFileError

__all__ = ["load_npz"]


def load_npz(
    path: str | Path, *, x_key: str = "x", y_key: str = "y", num_classes: int | None = None
) -> ImageData:
    """Load images and labels from an ``.npz`` archive (``numpy.savez``).

    Object arrays are refused: the archive is opened with ``allow_pickle=False``, so
    a malicious file cannot run code.

    Args:
        path: the archive.
        x_key: name of the image array: (N, H, W), (N, C, H, W) or (N, H, W, C);
            uint8 in [0, 255] or float in [0, 1].
        y_key: name of the label array (N,), integers.
        num_classes: number of classes; default ``max(label) + 1``.

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
        except ValueError as error:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: cannot be read without unpickling ({error})") from None
    x = images_from_array(images, f"{path}[{x_key}]")
    y = labels_from_array(labels, x.shape[0], f"{path}[{y_key}]")
    classes = num_classes if num_classes is not None else int(y.max()) + 1
    return ImageData(x, y, classes, f"npz:{path}")
