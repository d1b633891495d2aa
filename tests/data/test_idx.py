from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import write_idx
from vulnscope.data import load_idx, read_idx
from vulnscope.errors import DataError, MissingFileError


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4) % 100).astype(dtype).reshape(2, 3, 4)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    loaded = read_idx(path)
    assert loaded.shape == (2, 3, 4) and np.array_equal(loaded, array)
    assert loaded.dtype.isnative


def test_load_idx_gives_scaled_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 7), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    data = load_idx(
        write_idx(tmp_path / "images", images),
        write_idx(tmp_path / "labels", labels, compress=True),
    )
    assert tuple(data.x.shape) == (5, 1, 6, 7) and data.x.dtype == torch.float32
    torch.testing.assert_close(data.x[:, 0], torch.from_numpy(images).float() / 255)
    assert data.y.tolist() == [3, 1, 4, 1, 5] and data.y.dtype == torch.int64
    assert data.num_classes == 6


def test_bad_magic_is_refused(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_truncated_data_is_refused(tmp_path):
    path = write_idx(tmp_path / "a.idx", np.zeros((4, 2, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(
        DataError, match=r"declares shape \(4, 2, 2\) \(16 bytes of data\), but the file holds 13"
    ):
        read_idx(path)


def test_label_count_must_match_image_count(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((4, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="expected 4 labels"):
        load_idx(images, labels)


def test_float_labels_are_refused(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((2, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels", np.zeros(2, dtype=">f4"))
    with pytest.raises(DataError, match="labels must be integers"):
        load_idx(images, labels)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(MissingFileError, match=r"IDX file .*nothing.idx' does not exist"):
        read_idx(tmp_path / "nothing.idx")


def test_corrupt_gzip_is_refused(tmp_path):
    path = tmp_path / "a.idx.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(path)


def test_load_data_reads_an_idx_pair(tmp_path):
    from vulnscope.data import load_data

    images = write_idx(tmp_path / "images", np.zeros((4, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    assert load_data(f"{images},{labels}").y.tolist() == [0, 1, 2, 3]


def test_class_names_are_optional_and_set_the_class_count(tmp_path):
    images = write_idx(tmp_path / "images", np.zeros((3, 2, 2), dtype=np.uint8))
    labels = write_idx(tmp_path / "labels", np.array([0, 2, 1], dtype=np.uint8))
    assert load_idx(images, labels).class_names is None
    data = load_idx(images, labels, class_names=["zero", "one", "two", "three"])
    assert data.class_names == ("zero", "one", "two", "three") and data.num_classes == 4
    with pytest.raises(DataError, match=r"label 2 has no class name \(2 names given\)"):
        load_idx(images, labels, class_names=["zero", "one"])
