"""Li and Li's cascade on convolutional PCA statistics."""

from __future__ import annotations

import pytest
import torch

from helpers import pairwise_auc
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.cascade import ConvCascade, layer_outputs
from vulnscope.detect.registry import DETECTORS
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import pretrained


def test_separates_pgd_examples_and_round_trips(tmp_path):
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    clean, labels = test.x[:100], test.y[:100]
    adversarial = PGD(eps=0.2, steps=10, seed=0)(model, clean, labels).x_adv
    detector = ConvCascade(epochs=100).fit(model, train.x[:300], train.y[:300])
    assert DETECTORS["conv-cascade"] is ConvCascade
    with torch.no_grad():
        clean_scores, adversarial_scores = detector.score(clean), detector.score(adversarial)
        first = model.conv1(clean)
        second = model.conv2(torch.relu(first))
        stages = [detector.stages_[0](first), detector.stages_[1](second)]
    auc = pairwise_auc(clean_scores, adversarial_scores)
    assert auc > 0.8, auc
    assert torch.allclose(clean_scores, torch.maximum(*stages), atol=1e-5)
    detector.threshold_at(0.1, clean)
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert again.threshold == detector.threshold and again.layers == ["conv1", "conv2"]
    assert torch.equal(again.score(adversarial), detector.score(adversarial))
    inputs = adversarial[:3].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(detector.score(inputs).sum(), inputs)
    assert bool(gradient.abs().sum() > 0)


def test_an_unknown_layer_is_named():
    model = pretrained("digits-cnn")
    with (
        pytest.raises(InvalidArgumentError, match="no submodule 'conv9'; its convolutions are"),
        layer_outputs(model, ["conv9"]),
    ):
        pass
