"""The SMT solver is an optional extra: without z3, one clear error says what to install."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from vulnscope.certify.verification import verify
from vulnscope.errors import InvalidArgumentError


def test_without_z3_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "z3", None)  # import z3 now raises ImportError
    model = nn.Sequential(nn.Linear(2, 3)).double().eval()
    x = torch.rand(2, 2, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match=r"pip install 'vulnscope\[smt\]'"):
        verify(model, x, torch.tensor([0, 1]), eps=0.1, method="smt")
    # the MILP needs no optional package
    assert len(verify(model, x, torch.tensor([0, 1]), eps=0.1).status) == 2


@pytest.mark.parametrize("method", ["milp", "smt"])
def test_a_tie_at_the_edge_of_the_ball_is_neither_verified_nor_falsified(method):
    # logits (x, 1 - x): on the ball [0.5, 1] around 0.75 the margin 2x - 1 reaches 0 at
    # x = 0.5, a tie argmax resolves to the label; no input is misclassified, yet the
    # margin is not positive either
    model = nn.Sequential(nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 1.0]))
    result = verify(
        model,
        torch.tensor([[0.75]], dtype=torch.float64),
        torch.tensor([0]),
        eps=0.25,
        method=method,
    )
    assert result.status == ("unknown",)
    assert "zero" in result.reasons[0]
