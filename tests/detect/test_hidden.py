"""Feinman et al.'s detectors on the last hidden layer: kernel density and dropout
uncertainty, against scikit-learn's KernelDensity and the uncertainty's definition."""

from __future__ import annotations

import pytest
import torch

from helpers import pairwise_auc
from vulnscope.detect.base import Detector, load_detector, save_detector
from vulnscope.detect.density import DensityDetector, gaussian_log_density
from vulnscope.detect.dropout import DropoutDetector, dropout_uncertainty
from vulnscope.detect.registry import DETECTORS
from vulnscope.detect.statistics_hidden import hidden_output
from vulnscope.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "detector", [DensityDetector(), DropoutDetector(passes=20)], ids=lambda d: d.name
)
def test_separates_fgsm_and_pgd_and_round_trips(detector: Detector, digits, tmp_path):
    model = digits["model"]
    assert DETECTORS[detector.name] is type(detector)
    detector.fit(model, digits["x"], digits["y"])
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    with torch.no_grad():
        clean = detector.score(digits["clean"])
        assert torch.equal(again.score(digits["clean"]), clean)  # the dropout masks too
        for attack in ("fgsm", "pgd"):
            assert pairwise_auc(clean, detector.score(digits[attack])) > 0.75, attack
    assert again.settings() == detector.settings()


def test_density_matches_scikit_learn(digits):
    from sklearn.neighbors import KernelDensity

    model = digits["model"]
    detector = DensityDetector(bandwidth=1.5).fit(model, digits["x"], digits["y"])
    with torch.no_grad():
        features = hidden_output(model, digits["x"], None)[0].double()
        queries, logits = hidden_output(model, digits["fgsm"][:20], "relu3")
    predicted = logits.argmax(1)
    for c in range(10):
        points = features[digits["y"] == c]
        reference = KernelDensity(kernel="gaussian", bandwidth=1.5).fit(points.numpy())
        expected = torch.from_numpy(reference.score_samples(queries.double().numpy()))
        torch.testing.assert_close(gaussian_log_density(queries.double(), points, 1.5), expected)
        chosen = predicted == c
        if chosen.any():
            scores = detector.score(digits["fgsm"][:20][chosen]).double()
            torch.testing.assert_close(-scores, expected[chosen], rtol=1e-4, atol=1e-3)


def test_dropout_uncertainty_is_the_variance_of_the_passes():
    p = torch.softmax(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)), -1)
    definition = p.square().sum(-1).mean(0) - p.mean(0).square().sum(-1)
    torch.testing.assert_close(dropout_uncertainty(p), definition)
    # two passes: |p1 - p2|^2 / 4
    torch.testing.assert_close(dropout_uncertainty(p), (p[0] - p[1]).square().sum(-1) / 4)
    torch.testing.assert_close(dropout_uncertainty(p[:1].expand(5, 3, 4)), torch.zeros(3))


def test_dropout_is_seeded_random_and_leaves_the_model_alone(digits):
    model, x = digits["model"], digits["clean"][:8]
    with torch.no_grad():
        before = model(x)
        first = DropoutDetector(passes=5, seed=1).fit(model, x, torch.zeros(8, dtype=torch.long))
        second = DropoutDetector(passes=5, seed=1).fit(model, x, torch.zeros(8, dtype=torch.long))
        a, b = first.score(x), second.score(x)
        assert torch.equal(a, b) and (a >= 0).all() and a.max() > 1e-3
        assert not torch.equal(first.score(x), a)  # each call draws new masks
        assert torch.equal(model(x), before) and not model._forward_hooks
        with pytest.raises(InvalidArgumentError, match="layer must name a submodule"):
            DropoutDetector(layer="fc9").fit(model, x, torch.zeros(8, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match=r"p must lie in \(0, 1\)"):
        DropoutDetector(p=1.0)
