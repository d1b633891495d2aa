"""CIFAR-10's binary batches, checked against records built from the format's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vulnscope.data import CIFAR10_CLASSES, DATA_DIR_ENV, load_cifar10_binary, load_data
from vulnscope.data import installed as installed_module
from vulnscope.errors import DataError, MissingFileError


def write_batch(path, images, labels):
    """Records as the CIFAR-10 page defines them: a label byte, then R, G, B planes row by row."""
    records = [
        bytes([int(label)]) + image[0].tobytes() + image[1].tobytes() + image[2].tobytes()
        for image, label in zip(images, labels, strict=True)
    ]
    path.write_bytes(b"".join(records))
    return path


def random_batch(seed, count):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, 10, size=count)


def test_batches_are_read_in_order_channels_first(tmp_path):
    first, second = random_batch(0, 3), random_batch(1, 2)
    paths = [write_batch(tmp_path / "a.bin", *first), write_batch(tmp_path / "b.bin", *second)]
    data = load_cifar10_binary(paths)
    expected = np.concatenate([first[0], second[0]])
    assert tuple(data.x.shape) == (5, 3, 32, 32)
    torch.testing.assert_close(data.x, torch.from_numpy(expected).float() / 255)
    assert data.y.tolist() == [*first[1], *second[1]]
    assert data.class_names == CIFAR10_CLASSES and data.class_names[3] == "cat"


def test_truncated_batches_and_bad_labels_are_refused(tmp_path):
    path = write_batch(tmp_path / "a.bin", *random_batch(0, 2))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="is not a positive multiple of the 3073-byte record"):
        load_cifar10_binary([path])
    images, _ = random_batch(0, 1)
    with pytest.raises(DataError, match=r"holds label 10; CIFAR-10 labels are 0\.\.9"):
        load_cifar10_binary([write_batch(tmp_path / "b.bin", images, [10])])
    with pytest.raises(MissingFileError, match="does not exist"):
        load_cifar10_binary([tmp_path / "none.bin"])


def test_load_data_finds_installed_cifar10(tmp_path, monkeypatch):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for index in range(1, 6):
        write_batch(folder / f"data_batch_{index}.bin", *random_batch(index, 1))
    write_batch(folder / "test_batch.bin", *random_batch(0, 2))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(installed_module, "SEARCH_PATH", ())
    test = load_data("cifar10")
    assert test.source == "cifar10:test" and len(test) == 2
    train = load_data("cifar10:train")
    expected = np.concatenate([random_batch(index, 1)[0] for index in range(1, 6)])
    torch.testing.assert_close(train.x, torch.from_numpy(expected).float() / 255)
