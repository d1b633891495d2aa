"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vulnscope._validation import check_choice, check_seed
from vulnscope.data.dataset import ImageData

__all__ = ["DIGITS_TEST_SIZE", "load_digits"]

DIGITS_TEST_SIZE = 397
"""Images in the test split; the other 1400 of the 1797 form the training split."""


def load_digits(split: Literal["train", "test", "all"] = "test", *, seed: int = 0) -> ImageData:
    """The 1797 8x8 digit images that ship with scikit-learn (no download).

    Alpaydin and Kaynak (1998), UCI "Optical recognition of handwritten digits". Pixel
    values 0..16 are scaled to [0, 1]. The split is a fixed permutation drawn from
    ``numpy.random.default_rng(seed)``: its first 397 images are the test split.

    Args:
        split: ``"test"`` (397 images), ``"train"`` (1400) or ``"all"`` (1797, in the
            original order).
        seed: seed of the train/test permutation.

    Returns:
        :class:`ImageData` with ``x`` of shape (N, 1, 8, 8) float32 in [0, 1], ``y`` (N,)
        int64 in 0..9.

    Example:
        >>> from vulnscope.data import load_digits
        >>> test = load_digits("test")
        >>> tuple(test.x.shape), test.num_classes
        ((397, 1, 8, 8), 10)

    """
    split = check_choice(split, "split", ("train", "test", "all"))  # type: ignore[assignment]
    seed = check_seed(seed) or 0
    pixels, targets = _digits()
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    labels = torch.from_numpy(targets.astype(np.int64))
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(labels))
        chosen = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
        index = torch.from_numpy(chosen)
        images, labels = images[index], labels[index]
    return ImageData(images.contiguous(), labels, 10, f"digits:{split}:seed{seed}")


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The (1797, 64) pixels (0..16) and (1797,) labels, read once per process.

    Read from the CSV file scikit-learn ships (what its ``load_digits`` parses), found
    without importing scikit-learn: the import costs about a second, paid by every worker
    and subprocess an audit starts. Where the file is not at its usual place, scikit-learn
    loads it.
    """
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits as sklearn_digits  # pragma: no cover

    bunch = sklearn_digits()  # pragma: no cover
    return bunch.data, bunch.target  # pragma: no cover
