"""Hendrycks and Gimpel's PCA statistics and Bhagoji et al.'s reduced classifier."""

from __future__ import annotations

import pytest
import torch

from helpers import pairwise_auc
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.pca import PCAReduced, PCAStatistics, principal_components
from vulnscope.detect.registry import DETECTORS
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import pretrained


@pytest.fixture(scope="module")
def digits():
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    clean, labels = test.x[:100], test.y[:100]
    adversarial = PGD(eps=0.2, steps=10, seed=0)(model, clean, labels).x_adv
    return model, train.x[:600], train.y[:600], clean, adversarial


def test_principal_components_match_numpy_eigenvectors():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    x = x @ torch.randn(6, 6, generator=generator, dtype=torch.float64)
    mean, components = principal_components(x)
    _, vectors = torch.linalg.eigh(torch.cov(x.T))
    reference = vectors.flip(1).T  # eigh sorts ascending
    assert torch.allclose(mean, x.mean(0))
    assert torch.allclose(
        (components * reference).sum(1).abs(), torch.ones(6, dtype=torch.float64), atol=1e-8
    )


@pytest.mark.parametrize("detector_class", [PCAStatistics, PCAReduced])
def test_separates_pgd_examples_and_round_trips(digits, detector_class, tmp_path):
    model, x, y, clean, adversarial = digits
    detector = detector_class().fit(model, x, y, seed=0)
    assert DETECTORS[detector.name] is detector_class
    with torch.no_grad():
        auc = pairwise_auc(detector.score(clean), detector.score(adversarial))
    assert auc > 0.8, auc
    detector.threshold_at(0.1, clean)
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert again.threshold == detector.threshold
    assert torch.equal(again.score(adversarial), detector.score(adversarial))
    inputs = adversarial[:4].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(detector.score(inputs).sum(), inputs)
    assert bool(gradient.abs().sum() > 0)


def test_statistics_score_is_the_tail_energy(digits):
    model, x, y, clean, _ = digits
    detector = PCAStatistics(tail=5).fit(model, x, y)
    mean, components = principal_components(x.flatten(1))
    reference = ((clean.flatten(1) - mean) @ components[-5:].T).square().mean(1)
    assert torch.allclose(detector.score(clean), reference, atol=1e-6)


def test_reduced_score_is_one_minus_the_agreement(digits):
    model, x, y, clean, _ = digits
    detector = PCAReduced(epochs=2).fit(model, x, y)
    with torch.no_grad():
        p = torch.softmax(model(clean), 1)
        q = torch.softmax(detector.reduced_(detector.reduce(clean)), 1)
        score = detector.score(clean)
    expected = torch.tensor([1.0 - float(p[i] @ q[i]) for i in range(len(clean))])
    assert torch.allclose(score, expected, atol=1e-6)


def test_bad_settings_are_refused(digits):
    model, x, y, _, _ = digits
    with pytest.raises(InvalidArgumentError, match="tail must be at most the inputs' dimension 64"):
        PCAStatistics(tail=65).fit(model, x, y)
    with pytest.raises(InvalidArgumentError, match="needs at least 64 of them, got 10"):
        PCAStatistics().fit(model, x[:10], y[:10])
