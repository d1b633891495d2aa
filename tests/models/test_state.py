from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.models import preserved_model_state
from vulnscope.models.checks import looks_like_probabilities


def test_state_is_restored_after_an_exception():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[2].eval()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError), preserved_model_state(model):
        assert not any(p.requires_grad for p in model.parameters())
        model(torch.randn(8, 3))  # updates batch-norm running statistics
        model.eval()
        raise KeyError
    assert model.training and model[1].training and not model[2].training
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_plain_callables_pass_through():
    with preserved_model_state(lambda x: x):
        pass


def test_probability_detection():
    logits = torch.randn(5, 4)
    assert looks_like_probabilities(torch.softmax(logits, 1))
    assert not looks_like_probabilities(logits)
    assert not looks_like_probabilities(torch.log_softmax(logits, 1))
