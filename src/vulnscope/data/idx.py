"""MNIST-format IDX files (LeCun et al., the MNIST database), plain or gzipped."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
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

__all__ = ["load_idx", "read_idx"]

_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise MissingFileError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: is not a valid gzip file ({error})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into an array of its declared dtype and shape.

    The format: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, each dimension
    as a big-endian uint32, then the data in C order. Gzipped files are recognised by
    their magic bytes.

    Args:
        path: the file.

    Returns:
        The array, in native byte order.

    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions but is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data), "
            f"but the file holds {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx(
    images: str | Path,
    labels: str | Path,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageData:
    """Load an image file and a label file in IDX format (e.g. MNIST's four files).

    Args:
        images: IDX file of shape (N, H, W) or (N, C, H, W); uint8 values are scaled to
            [0, 1], floats must already lie there.
        labels: IDX file of shape (N,) with integer class labels.
        num_classes: number of classes; default the number of ``class_names``, else
            ``max(label) + 1``.
        class_names: a name per class, label 0 first (IDX files carry none).

    Returns:
        :class:`ImageData`.

    """
    x = images_from_array(read_idx(images), str(images))
    y = labels_from_array(read_idx(labels), x.shape[0], str(labels))
    names = None if class_names is None else class_names_from(class_names, y, str(labels))
    classes = class_count(num_classes, names, y)
    return ImageData(x, y, classes, f"idx:{images}", class_names=names)
