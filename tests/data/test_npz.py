from __future__ import annotations

import numpy as np
import pytest
import torch

from vulnscope.data import load_data, load_npz
from vulnscope.errors import DataError, InvalidArgumentError, MissingFileError


def test_uint8_grey_images(tmp_path):
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.savez(tmp_path / "d.npz", x=images, y=np.array([0, 2, 1]))
    data = load_npz(tmp_path / "d.npz")
    assert tuple(data.x.shape) == (3, 1, 4, 4)
    torch.testing.assert_close(data.x[:, 0], torch.from_numpy(images).float() / 255)
    assert data.y.tolist() == [0, 2, 1] and data.num_classes == 3


def test_channels_last_float_images_are_moved_to_channels_first(tmp_path):
    images = np.random.default_rng(0).random((2, 5, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([[1], [0]]))
    data = load_npz(tmp_path / "d.npz", x_key="images", y_key="labels", num_classes=10)
    assert tuple(data.x.shape) == (2, 3, 5, 5) and data.num_classes == 10
    torch.testing.assert_close(data.x, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_float_images_outside_unit_interval_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((2, 3, 3), 255.0), y=np.array([0, 1]))
    with pytest.raises(
        DataError, match=r"float images must lie in \[0, 1\], got \[255, 255\]; divide by 255"
    ):
        load_npz(tmp_path / "d.npz")


def test_object_arrays_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.savez(tmp_path / "evil.npz", x=np.array([Exploit()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="cannot be read without unpickling"):
        load_npz(tmp_path / "evil.npz")
    assert not marker.exists()


def test_missing_array_names_what_the_archive_holds(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((1, 2, 2)), y=np.array([0]))
    with pytest.raises(DataError, match=r"has no array named 'x'; it holds \['images', 'y'\]"):
        load_npz(tmp_path / "d.npz")


def test_single_npy_array_is_explained(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as file:
        np.save(file, np.zeros((2, 2)))
    with pytest.raises(DataError, match="holds a single array"):
        load_npz(path)


def test_not_an_archive(tmp_path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(DataError, match=r"is not a readable .npz archive"):
        load_npz(tmp_path / "d.npz")


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_npz(tmp_path / "none.npz")


def test_load_data_resolves_every_spec(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 3), dtype=np.uint8), y=np.array([0, 1]))
    assert len(load_data(str(tmp_path / "d.npz"))) == 2
    assert len(load_data("digits")) == 397 and len(load_data("digits:train")) == 1400
    with pytest.raises(InvalidArgumentError, match="data must be 'digits'"):
        load_data("emnist")


def test_class_names_are_read_without_pickle_and_set_the_class_count(tmp_path):
    names = np.array(["cat", "dog", "émeu"])  # a NumPy unicode array, not objects
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]), class_names=names
    )
    data = load_npz(tmp_path / "d.npz")
    assert data.class_names == ("cat", "dog", "émeu") and data.num_classes == 3
    assert load_npz(tmp_path / "d.npz", names_key="other").class_names is None


def test_byte_string_class_names_are_decoded(tmp_path):
    names = np.array([b"\xc3\xa9", b"b"])  # UTF-8 bytes of "é"
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([1, 0]), class_names=names
    )
    assert load_npz(tmp_path / "d.npz").class_names == ("é", "b")


def test_object_class_names_are_refused_with_the_way_to_save_them(tmp_path):
    names = np.array(["cat", "dog"], dtype=object)
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]), class_names=names
    )
    with pytest.raises(
        DataError, match=r"without unpickling .*save strings as a NumPy string array"
    ):
        load_npz(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("names", "num_classes", "message"),
    [
        (np.array(["cat"]), None, r"label 1 has no class name \(1 names given\)"),
        (np.array([["a", "b"]]), None, "class names must be a 1-D array of strings"),
        (np.array([1, 2]), None, "class names must be a 1-D array of strings"),
        (np.array(["a", ""]), None, "class names must be non-empty strings"),
        (np.array(["a", "b"]), 3, r"expected a class name per class \(3\), got 2 names"),
    ],
)
def test_bad_class_names_are_refused(tmp_path, names, num_classes, message):
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]), class_names=names
    )
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "d.npz", num_classes=num_classes)
