from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

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


def _plain_copy(model: DigitsCNN) -> nn.Sequential:
    """The same layers as a plain nn.Sequential with PyTorch's max pooling."""
    layers = dict(model.named_children())
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(OrderedDict(layers)).eval()


@pytest.mark.parametrize("batch", [1, 7, 64, 200])
def test_cnn_fast_pooling_keeps_outputs_and_gradients(batch):
    model = DigitsCNN().eval()
    plain = _plain_copy(model)
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    grads = []
    for net in (model, plain):
        leaf = x.clone().requires_grad_()
        torch.nn.functional.cross_entropy(
            net(leaf), torch.zeros(batch, dtype=torch.long)
        ).backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_cnn_is_scriptable_with_the_same_outputs():
    model = DigitsCNN().eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(model)(x), model(x))
