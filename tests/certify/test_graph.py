"""read_graph: which networks it reads (and reproduces), and the one error for the rest."""

from __future__ import annotations

import pytest
import torch
from certify_networks import FunctionalMLP, ResidualBlock
from torch import Tensor, nn
from torch.nn import functional

from vulnscope.certify import certify
from vulnscope.certify.bounds import Add, LeakyReLU, ReLU, Reshape, ScaleShift, Tanh
from vulnscope.certify.graph import read_graph
from vulnscope.errors import ModelError
from vulnscope.models import DigitsCNN, DigitsMLP, Normalized


def example(shape: tuple[int, ...] = (2, 4, 4), n: int = 3, seed: int = 0) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def op_types(model: nn.Module, x: Tensor) -> list[type]:
    return [type(node.op) for node in read_graph(model, x).nodes[1:]]


def assert_reproduces(model: nn.Module, x: Tensor) -> None:
    """The graph read on ``x`` computes the model's function on other inputs too."""
    graph = read_graph(model, x)
    other = example(tuple(x.shape[1:]), n=5, seed=1)
    torch.testing.assert_close(graph.forward(other), model(other).detach())


def test_a_residual_block_is_read_with_fx_into_a_sum_of_two_branches():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), ResidualBlock(3, "tanh"), nn.Flatten(), nn.Linear(48, 3)
    ).eval()
    x = example()
    graph = read_graph(model, x)
    names = [node.name for node in graph.nodes]
    assert "1.conv1" in names and "1.conv2" in names
    (add,) = [node for node in graph.nodes if isinstance(node.op, Add)]
    # x + conv2(...): one input is the block's input, the other its second convolution
    assert sorted(graph.nodes[i].name for i in add.inputs) == ["0", "1.conv2"]
    assert Tanh in op_types(model, x)
    assert_reproduces(model, x)


def test_functional_activations_flatten_and_constant_arithmetic_are_read():
    torch.manual_seed(0)
    model = FunctionalMLP(6).eval()
    x = example()
    types = op_types(model, x)
    assert types[0] is Reshape  # torch.flatten
    assert LeakyReLU in types and Tanh in types
    assert types.count(ScaleShift) == 2  # * 2.0 and - 0.5
    assert_reproduces(model, x)


def test_the_normalized_wrapper_becomes_a_per_channel_scale_and_shift():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(32, 3))
    model = Normalized(inner, mean=[0.4, 0.5], std=[0.3, 0.2]).eval()
    graph = read_graph(model, example())
    first = graph.nodes[1]
    assert isinstance(first.op, ScaleShift) and first.name == "normalise"
    assert [node.name for node in graph.nodes[2:]] == ["model.0", "model.1"]
    assert_reproduces(model, example())


@pytest.mark.parametrize("factory", [DigitsMLP, DigitsCNN])
def test_the_default_digits_models_are_read_and_certified(factory):
    torch.manual_seed(0)
    model = factory().eval()
    x = example((1, 8, 8))
    graph = read_graph(model, x)
    assert [node.name for node in graph.nodes[1:]] == list(dict(model.named_children()))
    assert ReLU in op_types(model, x)
    assert_reproduces(model, x)
    labels = model(x).argmax(1)
    assert certify(model, x[:1], labels[:1], eps=1e-4, method="ibp").margins.shape == (1, 10)


class Square(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * x


class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


class SignFlip(nn.Module):
    """Branches on the data: fx cannot trace it."""

    def forward(self, x: Tensor) -> Tensor:
        return x if bool(x.sum() > 0) else -x


def with_layer(layer: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(32, 8), nn.Sequential(nn.Linear(8, 8), layer), nn.Linear(8, 3)
    ).eval()


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (nn.GELU(), "GELU at '2.1'"),
        (nn.PReLU(), "PReLU at '2.1'"),
        (nn.Softplus(), "Softplus at '2.1'"),
        (Square(), "mul(...) at '2.1.mul'"),
        (Sine(), "sin(...) at '2.1.sin'"),
        (SignFlip(), "SignFlip at '2.1'"),
    ],
)
def test_an_unsupported_layer_gets_one_error_naming_it_and_where_it_sits(layer, words):
    with pytest.raises(ModelError, match="certify cannot bound") as raised:
        read_graph(with_layer(layer), example())
    assert words in str(raised.value)


@pytest.mark.parametrize("last", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_a_probability_output_is_refused_with_the_advice_to_certify_logits(last):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 3), last).eval()
    with pytest.raises(ModelError, match="certify bounds logits, not probabilities"):
        certify(model, example(), torch.tensor([0, 1, 2]), eps=0.1)


class SoftmaxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        return functional.softmax(self.fc(x.flatten(1)), dim=1)


def test_a_functional_softmax_is_refused_too():
    with pytest.raises(ModelError, match=r"ends in softmax .*certify bounds logits"):
        read_graph(SoftmaxHead().eval(), example())


@pytest.mark.parametrize(
    ("layer", "words"),
    [(nn.BatchNorm1d(8), "BatchNorm1d is in training mode"), (nn.Dropout(0.5), "Dropout is in")],
)
def test_a_layer_left_in_training_mode_is_refused(layer, words):
    model = with_layer(layer).train()
    with pytest.raises(ModelError, match=words):
        read_graph(model, example())
    read_graph(model.eval(), example())  # and read in eval mode


def test_the_identity_has_nothing_to_certify():
    with pytest.raises(ModelError, match="no layer certify can bound"):
        read_graph(nn.Sequential(nn.Identity()), example())


class BroadcastSum(nn.Module):
    """Adds a (2, 1, 1) branch to a (2, 2, 2) one: a sum certify's backward pass cannot split."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, 2, 1)
        self.narrow = nn.Conv2d(1, 2, 2, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((self.wide(x) + self.narrow(x)).flatten(1))


def test_a_sum_of_branches_of_different_shapes_is_refused_by_name():
    x = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ModelError, match=r"'add' sums shapes \(2, 2, 2\) and \(2, 1, 1\)"):
        certify(BroadcastSum().eval(), x, torch.tensor([0, 1, 2]), eps=0.1)
