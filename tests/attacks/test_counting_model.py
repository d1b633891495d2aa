from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks.counting import CountingModel
from vulnscope.models.checks import is_batch_independent

SHAPE = (1, 3, 3)


def test_batch_sizes_fall_on_a_geometric_ladder_below_the_largest_batch():
    counting = CountingModel(tiny_classifier(0, SHAPE))
    assert counting.padded_size(400) == 400
    sizes = {counting.padded_size(n) for n in range(1, 401)}
    ladder = sorted(s for s in sizes if s > 8)
    assert ladder[-1] == 400 and len(sizes) < 30
    assert all(b / a <= 1 / 0.8 + 0.01 for a, b in itertools.pairwise(ladder))
    assert all(counting.padded_size(n) >= n for n in range(1, 401))


def test_padding_changes_neither_outputs_nor_gradients_and_counts_real_samples():
    model = tiny_classifier(1, SHAPE)
    counting = CountingModel(model)
    counting(random_inputs(0, 50, SHAPE, (0.0, 1.0)))  # the largest batch: 50
    x = random_inputs(1, 23, SHAPE, (0.0, 1.0)).requires_grad_(True)
    assert counting.padded_size(23) > 23
    logits = counting(x)
    (grad,) = torch.autograd.grad(logits.square().sum(), x)
    x_plain = x.detach().clone().requires_grad_(True)
    plain = model(x_plain)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), x_plain)
    torch.testing.assert_close(logits, plain)
    torch.testing.assert_close(grad, plain_grad)
    assert (counting.forward_evals, counting.gradient_evals) == (73, 23)


@pytest.mark.parametrize(
    ("model", "independent"),
    [
        (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval(), True),
        (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train(), False),
        (
            nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)).eval(),
            False,
        ),
        (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train(), False),
        (nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).eval(), True),
        (lambda x: x, True),
    ],
)
def test_batch_independence(model, independent):
    assert is_batch_independent(model) is independent


def test_batch_dependent_models_are_never_padded():
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(9, 4), nn.BatchNorm1d(4, track_running_stats=False)
    ).eval()
    counting = CountingModel(model, batch_independent=is_batch_independent(model))
    counting(torch.rand(50, *SHAPE))
    assert counting.padded_size(23) == 23
