from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError
from vulnscope.models import train_classifier


def _blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.2, 0.2], [0.8, 0.8], [0.2, 0.8]])
    y = torch.randint(0, 3, (300,), generator=generator)
    x = centres[y] + 0.05 * torch.randn(300, 2, generator=generator)
    return x, y


def _fresh(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_training_learns_separable_blobs_and_returns_eval_mode():
    x, y = _blobs()
    model = train_classifier(_fresh(0), x, y, epochs=30, lr=1e-2)
    assert not model.training
    assert (model(x).argmax(1) == y).float().mean() > 0.98


def test_same_seed_same_weights_different_seed_different_weights():
    x, y = _blobs()
    first = train_classifier(_fresh(0), x, y, epochs=2, seed=5)
    second = train_classifier(_fresh(0), x, y, epochs=2, seed=5)
    third = train_classifier(_fresh(0), x, y, epochs=2, seed=6)
    for a, b, _c in zip(first.parameters(), second.parameters(), third.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, c) for a, c in zip(first.parameters(), third.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be > 0.0"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_training_arguments_are_named(kwargs, message):
    x, y = _blobs()
    with pytest.raises(InvalidArgumentError, match=message):
        train_classifier(_fresh(0), x, y, **kwargs)
