"""The trained detectors (Grosse et al.'s extra class, Gong et al.'s binary classifier,
Metzen et al.'s subnetwork) on the digits CNN: they separate their own attack's examples,
and their files round-trip."""

from __future__ import annotations

import pytest
import torch

from helpers import pairwise_auc
from vulnscope.detect.base import Detector, load_detector, save_detector
from vulnscope.detect.binary import BinaryDetector
from vulnscope.detect.extra_class import ExtraClassDetector
from vulnscope.detect.registry import DETECTORS
from vulnscope.detect.subnetwork import SubnetworkDetector
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import pretrained


@pytest.mark.parametrize(
    "detector",
    [
        ExtraClassDetector(epochs=20),
        BinaryDetector(epochs=5),
        SubnetworkDetector(epochs=5),
    ],
    ids=lambda detector: detector.name,
)
def test_separates_its_own_attack_and_round_trips(detector: Detector, digits, tmp_path):
    model = digits["model"]
    assert DETECTORS[detector.name] is type(detector)
    detector.fit(model, digits["x"][:300], digits["y"][:300], seed=0)
    with torch.no_grad():
        clean, adversarial = (
            detector.score(digits["clean"]),
            detector.score(digits[detector.attack]),
        )
    assert pairwise_auc(clean, adversarial) > 0.75
    x = digits["clean"][:5].clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(detector.score(x).sum(), x)
    assert gradient.abs().sum() > 0  # differentiable in the input, for the adaptive attack
    detector.threshold_at(0.1, digits["clean"])
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert type(again) is type(detector) and again.settings() == detector.settings()
    assert again.threshold == detector.threshold
    with torch.no_grad():
        assert torch.equal(again.score(digits["fgsm"]), detector.score(digits["fgsm"]))


def test_fitting_is_seeded(digits):
    model, x, y = digits["model"], digits["x"][:64], digits["y"][:64]
    first, second, other = (
        BinaryDetector(epochs=1, architecture="mlp").fit(model, x, y, seed=s) for s in (3, 3, 4)
    )
    with torch.no_grad():
        assert torch.equal(first.score(digits["clean"]), second.score(digits["clean"]))
        assert not torch.equal(first.score(digits["clean"]), other.score(digits["clean"]))


def test_bad_settings_are_refused_by_name():
    with pytest.raises(InvalidArgumentError, match="attack must be one of"):
        BinaryDetector(attack="jsma")
    with pytest.raises(InvalidArgumentError, match="architecture"):
        ExtraClassDetector(architecture="resnet")
    with pytest.raises(InvalidArgumentError, match=r"takes \(1, 8, 8\) inputs"):
        BinaryDetector().build((3, 8, 8), 10)
    with pytest.raises(InvalidArgumentError, match="layer must name a submodule"):
        SubnetworkDetector(layer="nope", epochs=1).fit(
            pretrained("digits-cnn"), torch.rand(4, 1, 8, 8), torch.arange(4)
        )
