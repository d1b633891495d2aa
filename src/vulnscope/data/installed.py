"""Well-known data sets read from files already on the machine: nothing is downloaded.

``load_installed("fashion-mnist")`` reads the four gzipped IDX files that the Debian and
Ubuntu package ``dataset-fashion-mnist`` installs in ``/usr/share/datasets/fashion-mnist``
(``sudo apt install dataset-fashion-mnist``). MNIST and CIFAR-10 are read the same way
from files the user puts in place: no Debian or Ubuntu package ships them.

Each data set lives in a folder named after it (``mnist/``, ``fashion-mnist/``,
``cifar10/``) under one of these roots, searched in order:

1. each folder in ``$VULNSCOPE_DATA_DIR`` (several separated by ``os.pathsep``);
2. :data:`SEARCH_PATH`: ``~/.local/share/datasets``, ``/usr/local/share/datasets``,
   ``/usr/share/datasets`` (where the Debian packages put them).

The first folder holding every file of the requested split wins. The ``source`` of the
returned data names the set and the split (``"fashion-mnist:test"``), so that later code
recognises it (:func:`known_dataset`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from vulnscope._validation import check_choice
from vulnscope.data.cifar import load_cifar10_binary
from vulnscope.data.dataset import ImageData
from vulnscope.data.idx import load_idx
from vulnscope.errors import InvalidTypeError, MissingFileError

__all__ = [
    "DATA_DIR_ENV",
    "FASHION_MNIST_CLASSES",
    "INSTALLED_DATASETS",
    "SEARCH_PATH",
    "data_dirs",
    "known_dataset",
    "load_installed",
]

DATA_DIR_ENV = "VULNSCOPE_DATA_DIR"
"""Environment variable naming folders searched first (separated by ``os.pathsep``)."""

SEARCH_PATH: tuple[str, ...] = (
    "~/.local/share/datasets",
    "/usr/local/share/datasets",
    "/usr/share/datasets",
)
"""Folders searched after ``$VULNSCOPE_DATA_DIR``, in order (``~`` is the user's home)."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's class names, label 0 first (Xiao, Rasul and Vollgraf, 2017)."""


@dataclass(frozen=True)
class _Installed:
    """Where a data set's files are, how to read them, and how to get them."""

    files: dict[str, tuple[str, ...]]
    """File names of each split."""
    compressed: bool
    """Whether each file may also be present gzipped (``NAME.gz``, tried first)."""
    read: Callable[[list[Path], str], ImageData]
    """Reads a split's files (in the order of :attr:`files`) into data named ``source``."""
    hint: str
    """How to install it, for the error raised when it is absent."""


def _idx(class_names: tuple[str, ...]) -> Callable[[list[Path], str], ImageData]:
    def read(paths: list[Path], source: str) -> ImageData:
        images, labels = paths
        data = load_idx(images, labels, num_classes=len(class_names), class_names=class_names)
        return replace(data, source=source)

    return read


def _read_cifar(paths: list[Path], source: str) -> ImageData:
    return load_cifar10_binary(paths, source=source)


_IDX_FILES: dict[str, tuple[str, ...]] = {
    split: (f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte")
    for split, stem in (("train", "train"), ("test", "t10k"))
}
"""The file names of MNIST's distribution, which Fashion-MNIST reuses."""

_DATASETS: dict[str, _Installed] = {
    "mnist": _Installed(
        files=_IDX_FILES,
        compressed=True,
        read=_idx(tuple(str(digit) for digit in range(10))),
        hint=f"no Debian or Ubuntu package ships it; set {DATA_DIR_ENV} to a folder whose "
        "mnist/ sub-folder holds its four IDX files (train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
    ),
    "fashion-mnist": _Installed(
        files=_IDX_FILES,
        compressed=True,
        read=_idx(FASHION_MNIST_CLASSES),
        hint="run `sudo apt install dataset-fashion-mnist` (Debian/Ubuntu) or set "
        f"{DATA_DIR_ENV} to a folder whose fashion-mnist/ sub-folder holds its four IDX files",
    ),
    "cifar10": _Installed(
        files={
            "train": tuple(f"data_batch_{index}.bin" for index in range(1, 6)),
            "test": ("test_batch.bin",),
        },
        compressed=False,
        read=_read_cifar,
        hint=f"no Debian or Ubuntu package ships it; set {DATA_DIR_ENV} to a folder whose "
        "cifar10/ sub-folder holds the batch files of CIFAR-10's binary version "
        "(data_batch_1.bin ... data_batch_5.bin, test_batch.bin)",
    ),
}

INSTALLED_DATASETS: tuple[str, ...] = tuple(_DATASETS)
"""Names :func:`load_installed` reads: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``."""


def data_dirs() -> list[Path]:
    """The roots searched, in order: ``$VULNSCOPE_DATA_DIR``'s folders, then :data:`SEARCH_PATH`."""
    given = [part for part in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if part]
    return [Path(folder).expanduser() for folder in (*given, *SEARCH_PATH)]


def known_dataset(source: str) -> str | None:
    """The well-known data set a data source names, or ``None``.

    Args:
        source: an :attr:`ImageData.source <vulnscope.data.ImageData.source>`, e.g.
            ``"fashion-mnist:test"``, or a name alone.

    Returns:
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"`` when the source is one of
        :data:`INSTALLED_DATASETS` (as :func:`load_installed` names its data), else
        ``None``: files the user points to are not guessed from their names.

    Example:
        >>> known_dataset("fashion-mnist:test"), known_dataset("npz:mnist.npz")
        ('fashion-mnist', None)

    """
    if not isinstance(source, str):
        raise InvalidTypeError(f"source must be a string, got {type(source).__name__}")
    name = source.partition(":")[0].lower()
    return name if name in _DATASETS else None


def _present(folder: Path, name: str, compressed: bool) -> Path | None:
    for candidate in (f"{name}.gz", name) if compressed else (name,):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_installed(name: str, split: str = "test") -> ImageData:
    """Load a split of a well-known data set from the files installed on this machine.

    Args:
        name: one of :data:`INSTALLED_DATASETS` (case-insensitive).
        split: ``"test"`` (10,000 images: MNIST's and Fashion-MNIST's ``t10k`` files,
            CIFAR-10's ``test_batch.bin``) or ``"train"`` (60,000; CIFAR-10: 50,000).

    Returns:
        :class:`ImageData`: (N, 1, 28, 28) for MNIST and Fashion-MNIST, (N, 3, 32, 32) for
        CIFAR-10, float32 in [0, 1] (bytes divided by 255), with the class names
        (MNIST's are ``"0"`` ... ``"9"``) and ``source`` ``"<name>:<split>"``.

    Raises:
        MissingFileError: no searched folder holds the split's files; one line saying how
            to install them.

    """
    name = check_choice(name, "name", INSTALLED_DATASETS)
    dataset = _DATASETS[name]
    split = check_choice(split, f"{name} split", tuple(dataset.files))
    folders = [root / name for root in data_dirs()]
    incomplete = ""
    for folder in folders:
        found = [_present(folder, file, dataset.compressed) for file in dataset.files[split]]
        paths = [path for path in found if path is not None]
        if len(paths) == len(found):
            return dataset.read(paths, f"{name}:{split}")
        if folder.is_dir() and not incomplete:
            missing = dataset.files[split][found.index(None)]
            incomplete = f"; {folder} has no {missing}{'(.gz)' if dataset.compressed else ''}"
    looked = ", ".join(str(folder) for folder in folders)
    raise MissingFileError(
        f"{name} is not installed: {dataset.hint}{incomplete} (looked in {looked})"
    )
