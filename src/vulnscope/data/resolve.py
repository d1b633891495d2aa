"""Turn a data specification from the command line into an :class:`ImageData`."""

from __future__ import annotations

from pathlib import Path

from vulnscope.data.dataset import ImageData
from vulnscope.data.digits import load_digits
from vulnscope.data.idx import load_idx
from vulnscope.data.image_folder import load_image_folder
from vulnscope.data.installed import INSTALLED_DATASETS, load_installed
from vulnscope.data.npz import load_npz
from vulnscope.errors import InvalidArgumentError

__all__ = ["load_data"]


def load_data(spec: str, *, seed: int = 0) -> ImageData:
    """Load the data set a specification names.

    Args:
        spec: ``"digits"`` (the embedded test split), ``"digits:train"``,
            ``"digits:all"``; ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` (the test
            split; ``":train"`` for the training split) read from the files installed on
            this machine (:func:`~vulnscope.data.load_installed`); a path to an ``.npz``
            archive holding arrays ``x``, ``y`` and optionally ``class_names``;
            ``"IMAGES,LABELS"``: two IDX files (plain or gzipped); or a folder with one
            sub-folder of images per class (read with Pillow).
        seed: seed of the digits train/test split.

    Returns:
        :class:`ImageData`.

    """
    name, _, split = spec.partition(":")
    if name == "digits":
        return load_digits(split or "test", seed=seed)  # type: ignore[arg-type]
    if name.lower() in INSTALLED_DATASETS:
        return load_installed(name, split or "test")
    if "," in spec:
        images, _, labels = spec.partition(",")
        return load_idx(images, labels)
    if spec.endswith(".npz"):
        return load_npz(spec)
    if Path(spec).is_dir():
        return load_image_folder(spec)
    raise InvalidArgumentError(
        f"data must be 'digits', 'digits:train', {', '.join(map(repr, INSTALLED_DATASETS))} "
        "(':train' for the training split), an .npz file, 'IMAGES,LABELS' IDX files, "
        f"or a folder with one sub-folder of images per class, got {spec!r}"
    )
