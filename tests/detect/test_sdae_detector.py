"""The stacked denoising autoencoder's reconstruction-error detector on the digits CNN."""

from __future__ import annotations

import pytest
import torch

from helpers import pairwise_auc
from vulnscope.attacks import FGSM, PGD
from vulnscope.data import load_digits
from vulnscope.defences.magnet import reconstruction_error
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.registry import DETECTORS
from vulnscope.detect.sdae import SDAEDetector
from vulnscope.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def fitted(digits_cnn):
    model = digits_cnn
    train = load_digits("train")
    detector = SDAEDetector(epochs=5, finetune_epochs=5).fit(
        model, train.x[:500], train.y[:500], seed=0
    )
    return model, detector


def test_flags_fgsm_and_pgd_examples_above_chance(fitted):
    model, detector = fitted
    test = load_digits("test")
    x, y = test.x[:100], test.y[:100]
    with torch.no_grad():
        clean = detector.score(x)
        for attack in (FGSM(eps=0.2), PGD(eps=0.2, steps=10, seed=0)):
            adversarial = detector.score(attack(model, x, y).x_adv)
            assert pairwise_auc(clean, adversarial) > 0.8, type(attack).__name__


def test_score_is_the_stacks_l1_reconstruction_error_and_differentiable(fitted):
    _, detector = fitted
    x = load_digits("test").x[:4].clone().requires_grad_(True)
    score = detector.score(x)
    expected = (x - detector.autoencoder(x)).abs().flatten(1).sum(1)
    assert torch.allclose(score, expected)
    (gradient,) = torch.autograd.grad(score.sum(), x)
    assert gradient.abs().sum() > 0
    assert torch.allclose(score, reconstruction_error(x, detector.autoencoder(x), 1.0))


def test_round_trips_through_its_file_and_the_registry(fitted, tmp_path):
    model, detector = fitted
    held_out = load_digits("test").x[100:200]
    detector.threshold_at(0.05, held_out)
    again = load_detector(save_detector(detector, tmp_path / "sdae.safetensors"), model)
    assert isinstance(again, SDAEDetector) and DETECTORS["sdae"] is SDAEDetector
    assert again.settings() == detector.settings() and again.threshold == detector.threshold
    with torch.no_grad():
        assert torch.equal(again.score(held_out), detector.score(held_out))
    with pytest.raises(InvalidArgumentError, match=r"hidden\[1\] must be an integer >= 1, got 0"):
        SDAEDetector(hidden=(16, 0))
