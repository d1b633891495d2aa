"""Counterfactuals in a flow's latent coordinates against adversarial examples (digits CNN)."""

from __future__ import annotations

import pytest
import torch

from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.counterfactual import counterfactual
from vulnscope.explain.flow import AffineCouplingFlow
from vulnscope.explain.flow_training import train_flow


@pytest.fixture(scope="module")
def flow() -> AffineCouplingFlow:
    # Small and briefly trained (about a second on one thread): enough to rank images.
    return train_flow(load_digits("train"), epochs=10, couplings=4, hidden=64, seed=0)


def test_counterfactuals_reach_the_target_and_stay_likelier_than_adversarial_examples(
    digits_cnn: torch.nn.Module, flow: AffineCouplingFlow, digits_test
) -> None:
    x, y = digits_test.x[:12], digits_test.y[:12]
    target = (y + 3) % 10
    result = counterfactual(digits_cnn, flow, x, target, steps=60)
    found, adversarial = result.counterfactual, result.adversarial
    assert adversarial is not None
    assert float(found.reached.float().mean()) >= 0.9
    assert bool(adversarial.reached.all())
    both = found.reached & adversarial.reached
    likelier = found.log_prob[both] > adversarial.log_prob[both]
    assert float(likelier.float().mean()) >= 0.8
    # The path starts at the input (the flow's round trip) and ends at the counterfactual.
    assert result.path.shape == (12, 61, 1, 8, 8)
    assert torch.allclose(result.path[:, 0], x, atol=1e-4)
    assert torch.equal(result.path[:, -1], found.x)
    expected = (found.x - x).flatten(1).norm(dim=1)
    assert torch.allclose(found.distance, expected)


def test_without_an_attack_and_with_one_target_for_all(
    digits_cnn: torch.nn.Module, flow: AffineCouplingFlow, digits_test
) -> None:
    result = counterfactual(digits_cnn, flow, digits_test.x[:3], 4, steps=2, attack=None)
    assert result.adversarial is None
    assert torch.equal(result.target, torch.full((3,), 4))


def test_bad_inputs(digits_cnn: torch.nn.Module, flow: AffineCouplingFlow, digits_test) -> None:
    x = digits_test.x[:2]
    small = AffineCouplingFlow((1, 4, 4), couplings=2, hidden=4)
    with pytest.raises(InvalidArgumentError, match=r"flow models images of shape \(1, 4, 4\)"):
        counterfactual(digits_cnn, small, x, 1, steps=1)
    with pytest.raises(InvalidArgumentError, match=r"target_class must hold class indices < 10"):
        counterfactual(digits_cnn, flow, x, 10, steps=1)
    with pytest.raises(InvalidArgumentError, match=r"target_class must be in \[0, 10\)"):
        counterfactual(digits_cnn, flow, x, torch.tensor([1, -1]), steps=1)
    with pytest.raises(InvalidArgumentError, match="attack must be a targeted"):
        counterfactual(digits_cnn, flow, x, 1, steps=1, attack=PGD(norm="l2", eps=1.0))
