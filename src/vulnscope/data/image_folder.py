"""A folder of images with one sub-folder per class, read with Pillow.

The layout most image data sets ship in (and torchvision's ``ImageFolder`` reads)::

    ROOT/cat/0001.png
    ROOT/cat/0002.jpg
    ROOT/dog/0001.png

Classes are the sub-folders in sorted order (label 0 is the first name); images are the
files with an image extension inside them, in sorted order. Hidden files and folders
(names starting with ".") are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vulnscope.data.dataset import ImageData, images_from_array
from vulnscope.errors import DataError, MissingFileError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
"""File extensions read as images (case-insensitive)."""


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def load_image_folder(
    root: str | Path, *, size: tuple[int, int] | None = None, mode: str | None = None
) -> ImageData:
    """Load every image under ``root``, labelled by the sub-folder it sits in.

    Args:
        root: the folder holding one sub-folder per class.
        size: ``(height, width)`` to resize every image to (bilinear); ``None`` requires
            all images to have the same size already.
        mode: ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels); ``None`` takes grey
            when every image is grey and RGB otherwise. Transparency is dropped.

    Returns:
        :class:`ImageData` with ``x`` (N, C, H, W) float32 in [0, 1] (8-bit pixels
        divided by 255) and the class names in ``class_names``.

    """
    from PIL import Image, UnidentifiedImageError  # imported on use: only this loader needs it

    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"image folder {str(root)!r} does not exist")
    if mode not in (None, "L", "RGB"):
        raise DataError(f"mode must be 'L', 'RGB' or None, got {mode!r}")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)):
        raise DataError(f"size must be (height, width) with positive integers, got {size!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise DataError(
            f"{root}: has no class sub-folders; expected ROOT/<class name>/<image files>"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        files.extend((path, label) for path in found)
    if not files:
        raise DataError(f"{root}: its class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{path}: is not a readable image ({error})") from None
        images.append(image)
    grey = all(image.mode in ("1", "L", "I;16", "I") for image in images)
    chosen = mode or ("L" if grey else "RGB")
    arrays: list[np.ndarray] = []
    for (path, _), image in zip(files, images, strict=True):
        converted = image.convert(chosen)
        if size is not None:
            converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
        if arrays and array.shape != arrays[0].shape:
            first = files[0][0]
            raise DataError(
                f"{path}: is {array.shape[1]}x{array.shape[0]} pixels but {first} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; give a size to resize every image"
            )
        arrays.append(array)
    x = images_from_array(np.stack(arrays), str(root))
    y = np.array([label for _, label in files], dtype=np.int64)
    return ImageData(
        x, torch.from_numpy(y), len(classes), f"folder:{root}", class_names=tuple(classes)
    )
