from __future__ import annotations

import pytest
import torch

from vulnscope.errors import InvalidArgumentError
from vulnscope.models import DigitsCNN, DigitsMLP


@pytest.mark.parametrize("factory", [DigitsCNN, DigitsMLP])
def test_models_map_digits_to_ten_logits(factory):
    assert factory()(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_cnn_children_are_named_blocks():
    names = [name for name, _ in DigitsCNN().named_children()]
    assert names[:2] == ["conv1", "relu1"] and names[-1] == "logits"


def test_bad_width_is_named():
    with pytest.raises(InvalidArgumentError, match="hidden must be an integer >= 1, got 0"):
        DigitsMLP(hidden=0)
