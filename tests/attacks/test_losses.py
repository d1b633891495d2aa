from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import given
from hypothesis import strategies as st

from vulnscope.attacks.losses import LOSSES, cross_entropy, dlr, is_adversarial, margin
from vulnscope.errors import InvalidArgumentError

seeds = st.integers(0, 2**31 - 1)


def _logits(seed, n=6, classes=5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=generator)
    target = (y + torch.randint(1, classes, (n,), generator=generator)) % classes
    return logits, y, target


@given(seed=seeds)
def test_cross_entropy_matches_torch(seed):
    logits, y, target = _logits(seed)
    torch.testing.assert_close(
        cross_entropy(logits, y, None), F.cross_entropy(logits, y, reduction="none")
    )
    torch.testing.assert_close(
        cross_entropy(logits, y, target), -F.cross_entropy(logits, target, reduction="none")
    )


@given(seed=seeds)
def test_margin_is_positive_exactly_when_the_attack_succeeds(seed):
    logits, y, target = _logits(seed)
    assert torch.equal(margin(logits, y, None) > 0, is_adversarial(logits, y, None))
    assert torch.equal(margin(logits, y, target) > 0, is_adversarial(logits, y, target))


def test_dlr_matches_its_formula_on_a_worked_example():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0]])  # sorted: 4, 3, 2, 1, 0
    y, target = torch.tensor([2]), torch.tensor([3])
    # untargeted: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3) = -(3 - 4) / (4 - 2)
    torch.testing.assert_close(dlr(logits, y, None), torch.tensor([0.5]))
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(3 - 0) / (4 - 1.5)
    torch.testing.assert_close(dlr(logits, y, target), torch.tensor([-3.0 / 2.5]))


@given(seed=seeds, shift=st.floats(-50, 50), scale=st.floats(0.01, 100))
def test_dlr_is_invariant_to_shifting_and_scaling_the_logits(seed, shift, scale):
    logits, y, target = _logits(seed)
    for t in (None, target):
        torch.testing.assert_close(
            dlr(scale * logits + shift, y, t), dlr(logits, y, t), atol=1e-6, rtol=1e-6
        )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_grows_as_the_true_logit_falls(name):
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    y = torch.tensor([0])
    lower = logits.clone()
    lower[0, 0] = 1.5
    assert LOSSES[name](lower, y, None) > LOSSES[name](logits, y, None)


def test_dlr_names_the_loss_and_the_class_count_when_there_are_too_few_classes():
    with pytest.raises(InvalidArgumentError, match=r"loss 'dlr' needs at least 3 classes.*has 2"):
        dlr(torch.zeros(1, 2), torch.tensor([0]), None)
    with pytest.raises(InvalidArgumentError, match="at least 4 classes when targeted"):
        dlr(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([1]))
