"""Turn a data specification from the command line into an :class:`ImageData`."""

from __future__ import annotations

from pathlib import Path

from vulnscope.data.dataset import ImageData
from vulnscope.data.digits import load_digits
from vulnscope.data.idx import load_idx
from vulnscope.data.image_folder import load_image_folder
from vulnscope.data.npz import load_npz
from vulnscope.errors import InvalidArgumentError

__all__ = ["load_data"]


def load_data(spec: str, *, seed: int = 0) -> ImageData:
    """Load the data set a specification names.

    Args:
        spec: ``"digits"`` (the embedded test split), ``"digits:train"``,
            ``"digits:all"``, a path to an ``.npz`` archive holding arrays ``x`` and
            ``y``, ``"IMAGES,LABELS"``: two IDX files (plain or gzipped), or a folder
            with one sub-folder of images per class (read with Pillow).
        seed: seed of the digits train/test split.

    Returns:
        :class:`ImageData`.

    """
    if spec == "digits" or spec.startswith("digits:"):
        split = spec.partition(":")[2] or "test"
        return load_digits(split, seed=seed)  # type: ignore[arg-type]
    if "," in spec:
        images, _, labels = spec.partition(",")
        return load_idx(images, labels)
    if spec.endswith(".npz"):
        return load_npz(spec)
    if Path(spec).is_dir():
        return load_image_folder(spec)
    raise InvalidArgumentError(
        f"data must be 'digits', 'digits:train', an .npz file, 'IMAGES,LABELS' IDX files, "
        f"or a folder with one sub-folder of images per class, got {spec!r}"
    )
