from __future__ import annotations

import pytest
import torch

from vulnscope.data import DIGITS_TEST_SIZE, load_digits
from vulnscope.errors import InvalidArgumentError


def test_digits_shapes_ranges_and_sizes():
    test, train, everything = load_digits("test"), load_digits("train"), load_digits("all")
    assert DIGITS_TEST_SIZE == 397
    assert tuple(test.x.shape) == (397, 1, 8, 8) and tuple(train.x.shape) == (1400, 1, 8, 8)
    assert len(everything) == 1797
    for split in (test, train):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert set(split.y.tolist()) == set(range(10)) and split.num_classes == 10


def test_split_is_a_partition_of_all_images():
    test, train, everything = load_digits("test"), load_digits("train"), load_digits("all")

    def rows(data):
        return sorted(
            (*tuple(image.flatten().tolist()), int(label))
            for image, label in zip(data.x, data.y, strict=True)
        )

    assert sorted(rows(test) + rows(train)) == rows(everything)


def test_split_is_fixed_by_its_seed():
    assert torch.equal(load_digits("test").x, load_digits("test", seed=0).x)
    assert not torch.equal(load_digits("test", seed=0).x, load_digits("test", seed=1).x)


def test_pixel_values_are_the_original_sixteenths():
    from sklearn.datasets import load_digits as sklearn_digits

    original = torch.from_numpy(sklearn_digits().images).float()[:, None] / 16
    assert torch.equal(load_digits("all").x, original)


def test_unknown_split_is_named():
    with pytest.raises(
        InvalidArgumentError, match=r"split must be one of \['train', 'test', 'all'\], got 'val'"
    ):
        load_digits("val")


def test_the_digits_are_scikit_learn_s_read_without_importing_it():
    import numpy as np
    from sklearn.datasets import load_digits as scikit_learn_digits

    reference = scikit_learn_digits()
    every = load_digits("all")
    assert torch.equal(every.x, torch.from_numpy(reference.images.astype(np.float32) / 16)[:, None])
    assert torch.equal(every.y, torch.from_numpy(reference.target.astype(np.int64)))
