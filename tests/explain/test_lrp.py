"""LRP against closed forms (gradient times input), Captum's LRP, and conservation."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError, ModelError
from vulnscope.explain.lrp import INPUT_LAYER, lrp, lrp_layers
from vulnscope.models.layout import ChannelsLastConv2d
from vulnscope.models.normalized import Normalized
from vulnscope.models.pooling import WindowMaxPool2d


def _cnn(*, bias: bool = True, seed: int = 0) -> nn.Sequential:
    """A tiny CNN with the layer types of the digits CNN (6x6 inputs, 3 classes)."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            OrderedDict(
                conv1=ChannelsLastConv2d(1, 3, 3, padding=1, bias=bias),
                relu1=nn.ReLU(),
                block=nn.Sequential(
                    OrderedDict(
                        conv2=nn.Conv2d(3, 4, 3, padding=1, bias=bias),
                        pool=WindowMaxPool2d(2),
                        relu2=nn.ReLU(),
                    )
                ),
                flatten=nn.Flatten(),
                drop=nn.Dropout(0.5),
                fc=nn.Linear(36, 5, bias=bias),
                relu3=nn.ReLU(),
                logits=nn.Linear(5, 3, bias=bias),
            )
        )
        .double()
        .eval()
    )


def _inputs(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _gradient_times_input(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
    return grad * x.detach()


def test_epsilon_to_zero_is_gradient_times_input_on_bias_free_relu_networks() -> None:
    model, x = _cnn(bias=False), _inputs()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = _gradient_times_input(model, x, y)
    torch.testing.assert_close(lrp(model, x, y, rules="epsilon", epsilon=1e-12), expected)
    torch.testing.assert_close(lrp(model, x, y, rules="zero"), expected)
    # and it explains the logit whole: bias-free LRP-0 is conservative
    torch.testing.assert_close(expected.sum((1, 2, 3)), model(x).gather(1, y[:, None])[:, 0])


class _Plain(nn.Module):
    """The tiny CNN in the only form Captum's LRP accepts (its own layer types, no Flatten)."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1).double()
        self.conv1.load_state_dict(model.conv1.state_dict())
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.conv2, self.pool = copy.deepcopy(model.block.conv2), nn.MaxPool2d(2)
        self.fc, self.logits = copy.deepcopy(model.fc), copy.deepcopy(model.logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.pool(self.conv2(self.relu1(self.conv1(x)))))
        return self.logits(self.relu3(self.fc(h.reshape(h.shape[0], -1))))


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "mixed"])
def test_matches_captums_lrp_on_the_same_rules(rule: str) -> None:
    captum = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule

    model, x = _cnn(), _inputs()
    with torch.no_grad():  # Captum's γ leaves the bias as it is, ours adds γ b⁺: make b⁺ = 0
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.bias.clamp_(max=0)
    y = torch.tensor([2, 1, 0, 2, 1, 0])
    reference = _Plain(model)
    for module in reference.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            gamma_layer = rule == "gamma" or (rule == "mixed" and isinstance(module, nn.Conv2d))
            module.rule = GammaRule(0.25) if gamma_layer else EpsilonRule(1e-3)
    expected = captum.LRP(reference).attribute(x.clone(), target=y)
    rules = {nn.Conv2d: "gamma", nn.Linear: "epsilon"} if rule == "mixed" else rule
    actual = lrp(model, x, y, rules=rules, epsilon=1e-3, gamma=0.25)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_zplus_is_non_negative_and_conserved() -> None:
    model = _cnn(bias=False)
    x = _inputs() + 0.1  # strictly positive: every z⁺ denominator is positive
    logits = model(x)
    y = logits.argmax(1)
    layers = lrp_layers(model, x, y, rules="zplus", bounds=(0.0, 1.1))
    relevance = lrp(model, x, y, rules="zplus", bounds=(0.0, 1.1))
    positive = logits.gather(1, y[:, None])[:, 0] > 0
    assert bool(positive.any())
    assert bool((relevance[positive] >= 0).all())
    for column in range(layers.sums.shape[1]):
        torch.testing.assert_close(layers.sums[:, column], layers.logit)
    torch.testing.assert_close(layers.input, layers.logit)
    torch.testing.assert_close(relevance.sum((1, 2, 3)), layers.logit)


def test_default_composite_zb_conserves_at_the_input_and_reads_normalized_bounds() -> None:
    model, x = _cnn(), _inputs()
    y = torch.tensor(1)
    layers = lrp_layers(model, x, y)
    assert layers.names[0] == "conv1" and layers.names[2] == "block.conv2"
    # zᴮ has no bias in its denominator: the input receives exactly conv1's relevance
    torch.testing.assert_close(layers.input, layers.sums[:, 0])
    # a Normalized in front: the inner network on (x - m) / s, with the bounds mapped alike
    wrapped = Normalized(model, mean=[0.5], std=[0.25])
    torch.testing.assert_close(
        lrp(wrapped, x, 1), lrp(model, (x - 0.5) / 0.25, 1, bounds=(-2.0, 2.0))
    )


def test_batchnorm_is_merged_into_the_layer_before_it() -> None:
    torch.manual_seed(3)
    norm = nn.BatchNorm2d(3)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.data.uniform_(0.5, 2)
    norm.bias.data.uniform_(-1, 1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), norm, nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    model = model.double().eval()
    x, y = _inputs(), torch.tensor([0, 1, 2, 0, 1, 2])
    # LRP-0 is gradient times input on any ReLU network, BatchNorm (affine) included
    torch.testing.assert_close(lrp(model, x, y, rules="zero"), _gradient_times_input(model, x, y))
    with pytest.raises(ModelError, match="does not follow a Linear or Conv2d"):
        lrp(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(36), nn.Linear(36, 2)).eval(), x.float(), 0)


def test_explicit_composite_by_name_and_input_key() -> None:
    model, x = _cnn(), _inputs()
    by_name = lrp(model, x, 0, rules={"conv1": "flat", "block.conv2": "zero", "fc": "zero",
                                      "logits": "zero"})  # fmt: skip
    by_key = lrp(model, x, 0, rules={INPUT_LAYER: "flat"})  # unmatched layers get LRP-0
    torch.testing.assert_close(by_name, by_key)
    # flat spreads each conv1 output's relevance evenly: the map does not depend on x there
    assert by_name.shape == x.shape


def test_state_is_preserved_and_no_hooks_remain() -> None:
    model, x = _cnn(), _inputs()
    model.train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidArgumentError, match=r"target must hold classes in \[0, 2\]"):
        lrp(model, x, 3)
    lrp(model, x, 0)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_bad_input_errors() -> None:
    model, x = _cnn(), _inputs()
    with pytest.raises(InvalidArgumentError, match=r"\[0, 2\].*got values in \[-1, 0\]"):
        lrp(model, x, torch.tensor([0, 0, 0, 0, 0, -1]))
    odd = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), act=nn.Tanh())).double()
    with pytest.raises(ModelError, match=r"'act' \(torch\.nn\.modules\.activation\.Tanh\)"):
        lrp(odd, x, 0)
    with pytest.raises(InvalidArgumentError, match=r"'nope'.*\['conv1', 'relu1'"):
        lrp(model, x, 0, rules={"nope": "epsilon"})
    with pytest.raises(InvalidArgumentError, match="first linear layer only"):
        lrp(model, x, 0, rules={"fc": "zb"})
    with pytest.raises(InvalidArgumentError, match="rules must be one of"):
        lrp(model, x, 0, rules="alpha")
