"""Well-known data sets read from installed files: discovery, names, and the missing-data error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_idx
from vulnscope.cli import main
from vulnscope.data import (
    DATA_DIR_ENV,
    FASHION_MNIST_CLASSES,
    known_dataset,
    load_data,
    load_installed,
)
from vulnscope.data import installed as installed_module
from vulnscope.errors import InvalidArgumentError, MissingFileError

# Fashion-MNIST's labels as its authors list them (github.com/zalandoresearch/fashion-mnist)
FASHION_LABELS = [
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
]
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """An empty user folder in $VULNSCOPE_DATA_DIR and an empty 'system' folder searched after."""
    user, system = tmp_path / "user", tmp_path / "system"
    user.mkdir()
    system.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(user))
    monkeypatch.setattr(installed_module, "SEARCH_PATH", (str(system),))
    return user, system


def install_idx(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split as MNIST's distribution names it: images gzipped, labels plain."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{stem}-images-idx3-ubyte.gz", images, compress=True)
    write_idx(folder / f"{stem}-labels-idx1-ubyte", labels)


def test_fashion_mnist_is_read_with_its_class_names(roots):
    user, _ = roots
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    install_idx(user / "fashion-mnist", "t10k", test_images, np.array([9, 0, 4], np.uint8))
    install_idx(user / "fashion-mnist", "train", test_images[:2], np.array([1, 2], np.uint8))
    data = load_data("fashion-mnist")
    assert data.source == "fashion-mnist:test" and data.num_classes == 10
    assert list(data.class_names or ()) == FASHION_LABELS == list(FASHION_MNIST_CLASSES)
    torch.testing.assert_close(data.x[:, 0], torch.from_numpy(test_images).float() / 255)
    assert data.y.tolist() == [9, 0, 4]
    train = load_data("fashion-mnist:train")
    assert train.source == "fashion-mnist:train" and train.y.tolist() == [1, 2]
    assert load_data("fashion-mnist:test").y.tolist() == [9, 0, 4]


def test_mnist_class_names_are_the_digits(roots):
    user, _ = roots
    install_idx(user / "mnist", "t10k", np.zeros((2, 3, 3), np.uint8), np.array([7, 1], np.uint8))
    data = load_installed("MNIST")
    assert data.class_names == tuple("0123456789") and data.source == "mnist:test"


def test_the_data_dir_comes_first_and_an_incomplete_folder_is_passed_over(roots, monkeypatch):
    user, system = roots
    install_idx(system / "mnist", "t10k", np.zeros((1, 2, 2), np.uint8), np.array([3], np.uint8))
    install_idx(user / "mnist", "t10k", np.zeros((1, 2, 2), np.uint8), np.array([5], np.uint8))
    assert load_installed("mnist").y.tolist() == [5]
    (user / "mnist" / "t10k-labels-idx1-ubyte").unlink()  # images alone: not this folder
    assert load_installed("mnist").y.tolist() == [3]
    monkeypatch.delenv(DATA_DIR_ENV)
    assert load_installed("mnist").y.tolist() == [3]


def test_a_missing_set_is_one_line_naming_the_package(roots):
    user, system = roots
    with pytest.raises(MissingFileError) as raised:
        load_data("fashion-mnist")
    message = str(raised.value)
    assert message.startswith(
        "fashion-mnist is not installed: run `sudo apt install dataset-fashion-mnist` "
        "(Debian/Ubuntu) or set VULNSCOPE_DATA_DIR to a folder whose fashion-mnist/ "
        "sub-folder holds its four IDX files"
    )
    assert "\n" not in message
    assert message.endswith(f"(looked in {user / 'fashion-mnist'}, {system / 'fashion-mnist'})")
    with pytest.raises(MissingFileError, match="mnist is not installed: no Debian or Ubuntu"):
        load_installed("mnist", "train")


def test_an_incomplete_folder_is_named_in_the_error(roots):
    _, system = roots
    install_idx(system / "mnist", "t10k", np.zeros((1, 2, 2), np.uint8), np.array([3], np.uint8))
    with pytest.raises(MissingFileError, match=r"mnist has no train-images-idx3-ubyte\(\.gz\)"):
        load_installed("mnist", "train")


def test_unknown_names_and_splits_are_refused(roots):
    with pytest.raises(InvalidArgumentError, match=r"fashion-mnist split must be one of"):
        load_data("fashion-mnist:validation")
    with pytest.raises(InvalidArgumentError, match=r"name must be one of \['mnist'"):
        load_installed("emnist")


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("fashion-mnist:test", "fashion-mnist"),
        ("mnist:train", "mnist"),
        ("cifar10:test", "cifar10"),
        ("MNIST", "mnist"),
        ("digits:test:seed0", None),
        ("npz:/data/mnist.npz", None),  # a file's name is not trusted to name its data
        ("idx:/data/fashion-mnist/t10k-images-idx3-ubyte.gz", None),
        ("folder:cifar10", None),
    ],
)
def test_known_dataset(source, name):
    assert known_dataset(source) == name


def test_the_source_of_loaded_data_is_recognised(roots):
    user, _ = roots
    install_idx(user / "mnist", "train", np.zeros((1, 2, 2), np.uint8), np.array([0], np.uint8))
    assert known_dataset(load_data("mnist:train").source) == "mnist"


def test_cli_prints_one_line_and_fails_when_the_set_is_absent(roots, tmp_path, capsys):
    status = main(["audit", "--data", "fashion-mnist", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.startswith(
        "vulnscope: error: fashion-mnist is not installed: run `sudo apt install "
        "dataset-fashion-mnist`"
    )
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.skipif(
    not (REAL_FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="the dataset-fashion-mnist package is not installed",
)
def test_the_installed_fashion_mnist_test_split(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(installed_module, "SEARCH_PATH", (str(REAL_FASHION.parent),))
    data = load_data("fashion-mnist")
    assert tuple(data.x.shape) == (10000, 1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.y, minlength=10).tolist() == [1000] * 10
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1
