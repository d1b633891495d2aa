"""MagNet's reconstruction-error detector through the detector contract."""

from __future__ import annotations

import torch

from helpers import pairwise_auc
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.defences.magnet import DigitsAutoencoder
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.reconstruction import ReconstructionDetector
from vulnscope.detect.registry import DETECTORS
from vulnscope.models import pretrained


def test_separates_pgd_examples_and_round_trips(tmp_path):
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    clean, labels = test.x[:100], test.y[:100]
    adversarial = PGD(eps=0.2, steps=10, seed=0)(model, clean, labels).x_adv
    detector = ReconstructionDetector().fit(model, train.x[:300], train.y[:300], seed=1)
    assert DETECTORS["magnet-reconstruction"] is ReconstructionDetector
    assert isinstance(detector.autoencoder_, DigitsAutoencoder)
    with torch.no_grad():
        clean_scores = detector.score(clean)
        adversarial_scores = detector.score(adversarial)
        reconstruction = detector.autoencoder_(clean)
    auc = pairwise_auc(clean_scores, adversarial_scores)
    assert auc > 0.8, auc
    expected = (clean - reconstruction).abs().flatten(1).sum(1)
    assert torch.allclose(clean_scores, expected, atol=1e-5)
    detector.threshold_at(0.1, clean)
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert again.threshold == detector.threshold and again.lr == detector.lr
    assert torch.equal(again.score(adversarial), detector.score(adversarial))
    inputs = adversarial[:3].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(detector.score(inputs).sum(), inputs)
    assert bool(gradient.abs().sum() > 0)
    once = [ReconstructionDetector(epochs=1).fit(model, train.x[:50], train.y[:50]) for _ in "ab"]
    assert torch.equal(once[0].score(clean), once[1].score(clean))
