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


def _textbook(model: DigitsCNN) -> nn.Sequential:
    """DigitsCNN's weights in the textbook network: plain layers, plain layout, each
    convolution's ReLU before the pooling."""
    layers = dict(model.named_children())
    conv1 = nn.Conv2d(1, layers["conv1"].out_channels, 3, padding=1)
    conv1.load_state_dict(layers["conv1"].state_dict())
    order = ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc", "relu3", "logits"]
    layers["conv1"], layers["pool"] = conv1, nn.MaxPool2d(2)
    return nn.Sequential(OrderedDict((name, layers[name]) for name in order)).eval()


def _input_gradient(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(net(leaf), torch.arange(x.shape[0]) % 10)
    return torch.autograd.grad(loss, leaf)[0]


@pytest.mark.parametrize("batch", [1, 7, 200])
def test_cnn_computes_the_textbook_network(batch):
    torch.manual_seed(batch)
    model = DigitsCNN().eval()
    textbook = _textbook(model)
    x = torch.rand(batch, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), textbook(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        _input_gradient(model, x), _input_gradient(textbook, x), rtol=1e-4, atol=1e-7
    )


def test_pooling_before_the_relu_is_exactly_the_same_function():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    layers = dict(model.named_children())
    order = ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc", "relu3", "logits"]
    swapped = nn.Sequential(OrderedDict((name, layers[name]) for name in order)).eval()
    x = torch.rand(64, 1, 8, 8)
    x[:8] = 0.0  # constant inputs: whole windows of ties, and of non-positive values
    with torch.no_grad():
        assert torch.equal(model(x), swapped(x))
    assert torch.equal(_input_gradient(model, x), _input_gradient(swapped, x))


def test_cnn_feature_maps_run_channels_last_and_its_weights_stay_plain():
    model = DigitsCNN().eval()
    maps = nn.Sequential(*list(model)[:4])(torch.rand(3, 1, 8, 8))  # conv1 .. pool
    assert maps.is_contiguous(memory_format=torch.channels_last) and not maps.is_contiguous()
    assert all(tensor.is_contiguous() for tensor in model.state_dict().values())


@pytest.mark.parametrize("factory", [DigitsCNN, DigitsMLP])
def test_slices_are_sequentials_of_the_same_named_layers(factory):
    model = factory().eval()
    x = torch.rand(6, 1, 8, 8)
    head, tail = model[:3], model[3:]
    assert type(head) is nn.Sequential and type(tail) is nn.Sequential
    names = [name for name, _ in model.named_children()]
    assert [name for name, _ in head.named_children()] == names[:3]
    assert all(head[i] is model[i] for i in range(3))  # shared, not copied
    with torch.no_grad():
        assert torch.equal(tail(head(x)), model(x))
    assert [name for name, _ in model[::-2].named_children()] == names[::-2]
    assert model[-1] is model.logits
    with pytest.raises(IndexError, match="out of range"):
        model[len(model)]
