from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from vulnscope.data import load_digits
from vulnscope.defences.parseval import (
    ConvexAggregation,
    parseval_deviation,
    parseval_retraction,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models import train_classifier


def _linear_with_singular_values(rows, columns, values, seed=0):
    """A float64 linear layer whose weight has the given singular values (random bases)."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(
        torch.randn(columns, columns, generator=generator, dtype=torch.float64)
    )
    rank = min(rows, columns)
    weight = left[:, :rank] @ torch.diag(torch.as_tensor(values, dtype=torch.float64))
    layer = nn.Linear(columns, rows).double()
    with torch.no_grad():
        layer.weight.copy_(weight @ right[:, :rank].T)
    return layer


@pytest.mark.parametrize(("rows", "columns"), [(9, 4), (4, 9), (5, 5)])
def test_repeated_retractions_drive_every_singular_value_to_one(rows, columns):
    rank = min(rows, columns)
    layer = _linear_with_singular_values(rows, columns, torch.linspace(0.05, 1.6, rank))
    for _ in range(300):
        parseval_retraction(layer, beta=0.1)
    weight = layer.weight.detach()
    singular = torch.linalg.svdvals(weight)
    torch.testing.assert_close(singular, torch.ones(rank, dtype=torch.float64), atol=1e-9, rtol=0)
    # the smaller Gram matrix is the identity: orthonormal columns (tall) or rows (wide)
    gram = weight.T @ weight if rows >= columns else weight @ weight.T
    torch.testing.assert_close(gram, torch.eye(rank, dtype=torch.float64), atol=1e-9, rtol=0)
    assert parseval_deviation(layer)[""] < 1e-8


def test_each_singular_value_follows_the_scalar_map():
    # s -> s + beta s (1 - s^2): the step acts on the singular values one by one
    values = torch.tensor([1.4, 0.9, 0.3], dtype=torch.float64)
    layer = _linear_with_singular_values(3, 7, values)
    parseval_retraction(layer, beta=0.2)
    expected = values + 0.2 * values * (1 - values**2)
    torch.testing.assert_close(
        torch.linalg.svdvals(layer.weight.detach()), expected, atol=1e-12, rtol=0
    )


def test_one_step_equals_the_formula_in_float64():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 8)).double()
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    beta = 0.01
    parseval_retraction(model, beta=beta)
    for layer, weight, bias in zip((model[0], model[2]), before, biases, strict=True):
        expected = (1 + beta) * weight - beta * weight @ weight.T @ weight
        torch.testing.assert_close(layer.weight.detach(), expected, atol=1e-14, rtol=0)
        assert torch.equal(layer.bias.detach(), bias)


def test_num_passes_repeats_the_step():
    torch.manual_seed(0)
    once = nn.Linear(5, 3).double()
    twice = nn.Linear(5, 3).double()
    twice.load_state_dict(once.state_dict())
    parseval_retraction(once, beta=0.05)
    parseval_retraction(once, beta=0.05)
    parseval_retraction(twice, beta=0.05, num_passes=2)
    torch.testing.assert_close(once.weight, twice.weight, atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    ("conv", "area"),
    [
        (nn.Conv2d(3, 5, 3), 9),  # wide: 5 x 27
        (nn.Conv2d(8, 20, (1, 2)), 2),  # tall: 20 x 16
        (nn.Conv1d(2, 4, 5), 5),
    ],
)
def test_convolution_kernels_become_scaled_parseval_frames(conv, area):
    conv = conv.double()
    torch.manual_seed(1)
    with torch.no_grad():
        # sqrt(k) W starts with singular values of order 1, inside the step's basin
        scale = math.sqrt(area * conv.weight[0].numel())
        conv.weight.copy_(torch.randn_like(conv.weight) / scale)
    for _ in range(400):
        parseval_retraction(conv, beta=0.1)
    reshaped = conv.weight.detach().reshape(conv.out_channels, -1)
    singular = torch.linalg.svdvals(math.sqrt(area) * reshaped)
    torch.testing.assert_close(singular, torch.ones_like(singular), atol=1e-9, rtol=0)
    assert parseval_deviation(conv)[""] < 1e-8


def test_grouped_convolutions_are_constrained_group_by_group():
    conv = nn.Conv2d(4, 6, 3, groups=2).double()
    for _ in range(400):
        parseval_retraction(conv, beta=0.1)
    for group in conv.weight.detach().reshape(2, 3, -1):
        singular = torch.linalg.svdvals(3.0 * group)
        torch.testing.assert_close(singular, torch.ones_like(singular), atol=1e-9, rtol=0)


def test_deviation_is_the_frobenius_distance_of_the_smaller_gram_matrix():
    values = torch.tensor([1.5, 0.5], dtype=torch.float64)
    model = nn.Sequential(_linear_with_singular_values(2, 6, values), nn.ReLU())
    deviations = parseval_deviation(model)
    assert list(deviations) == ["0"]
    assert deviations["0"] == pytest.approx(float(torch.sqrt(((values**2 - 1) ** 2).sum())))
    # a zero kernel (2 x 4 reshaped) is sqrt(2) from a frame, whatever its scaling
    conv = nn.Conv2d(1, 2, 2, bias=False)
    nn.init.zeros_(conv.weight)
    assert parseval_deviation(conv) == {"": pytest.approx(math.sqrt(2))}
    # a 2x2 kernel of 1/4: sqrt(k) W = (1, 1, 1, 1) / 2 has unit norm, an exact frame
    single = nn.Conv2d(1, 1, 2, bias=False)
    nn.init.constant_(single.weight, 0.25)
    assert parseval_deviation(single)[""] == pytest.approx(0.0, abs=1e-12)


def test_convex_aggregation_forward_is_the_weighted_sum_of_its_branches():
    torch.manual_seed(0)
    branches = [nn.Identity(), nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh())]
    block = ConvexAggregation(*branches).double()
    with torch.no_grad():
        block.alpha.copy_(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = 0.2 * x + 0.5 * branches[1](x) + 0.3 * branches[2](x)
    torch.testing.assert_close(block(x), expected, atol=1e-15, rtol=0)
    assert torch.equal(
        ConvexAggregation(nn.Identity(), nn.Identity()).alpha, torch.tensor([0.5, 0.5])
    )


def test_convex_aggregation_is_scriptable_inside_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        ConvexAggregation(nn.Identity(), nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())),
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 3),
    ).eval()
    scripted = torch.jit.script(model)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(scripted(x), model(x), atol=0, rtol=0)


def _digits_model(seed):
    torch.manual_seed(seed)
    residual = nn.Sequential(nn.Linear(32, 32), nn.ReLU())
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        ConvexAggregation(nn.Identity(), residual),
        nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def digits_train():
    return load_digits("train")


def test_training_with_the_retraction_keeps_layers_parseval_and_learns(digits_train, digits_test):
    x, y = digits_train.x, digits_train.y
    plain = train_classifier(_digits_model(0), x, y, epochs=12)
    parseval = train_classifier(
        _digits_model(0), x, y, epochs=12, after_step=partial(parseval_retraction, beta=0.1)
    )
    constrained = parseval_deviation(parseval)
    free = parseval_deviation(plain)
    assert list(constrained) == ["1", "3.branches.1.0", "4"]
    assert max(constrained.values()) < 0.5
    assert max(constrained.values()) < min(free.values()) / 10
    alpha = parseval[3].alpha.detach()
    assert bool((alpha >= 0).all())
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(alpha, torch.tensor([0.5, 0.5]))  # it was learned
    with torch.no_grad():
        accuracy = (parseval(digits_test.x).argmax(1) == digits_test.y).float().mean()
    assert accuracy > 0.8


def test_aggregation_weights_are_projected_onto_the_simplex():
    block = ConvexAggregation(nn.Identity(), nn.Identity(), nn.Identity())
    with torch.no_grad():
        block.alpha.copy_(torch.tensor([0.5, 0.8, -0.3]))
    parseval_retraction(block)
    torch.testing.assert_close(block.alpha.detach(), torch.tensor([0.35, 0.65, 0.0]))


@pytest.mark.parametrize("beta", [0.0, -0.1, 1.0, 2.5])
def test_beta_outside_the_open_unit_interval_is_refused(beta):
    with pytest.raises(InvalidArgumentError, match="beta must be"):
        parseval_retraction(nn.Linear(2, 2), beta=beta)


def test_bad_arguments_are_named():
    with pytest.raises(InvalidTypeError, match="beta must be a real number"):
        parseval_retraction(nn.Linear(2, 2), beta="0.1")
    with pytest.raises(InvalidArgumentError, match="num_passes must be an integer >= 1"):
        parseval_retraction(nn.Linear(2, 2), num_passes=0)
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"):
        parseval_retraction(torch.eye(2))
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"):
        parseval_deviation("model")
    with pytest.raises(InvalidArgumentError, match="branches must hold at least one"):
        ConvexAggregation()
    with pytest.raises(InvalidTypeError, match=r"branches\[1\] must be a torch.nn.Module"):
        ConvexAggregation(nn.Identity(), lambda x: x)
