from __future__ import annotations

import pytest
import torch

from vulnscope.errors import InvalidTypeError
from vulnscope.models import DigitsMLP, build_seeded


def test_same_seed_same_weights_and_the_global_state_is_given_back() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b = build_seeded(DigitsMLP, 7), build_seeded(DigitsMLP, 7)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    other = build_seeded(DigitsMLP, 8)
    assert not torch.equal(next(a.parameters()), next(other.parameters()))
    torch.manual_seed(7)
    assert torch.equal(next(DigitsMLP().parameters()), next(a.parameters()))


def test_a_factory_that_is_not_a_module_factory_is_refused_by_name() -> None:
    with pytest.raises(InvalidTypeError, match=r"architecture must return a torch\.nn\.Module"):
        build_seeded(lambda: "model", 0, name="architecture")  # type: ignore[arg-type, return-value]
    with pytest.raises(InvalidTypeError, match="factory must be callable"):
        build_seeded(3, 0)  # type: ignore[arg-type]
