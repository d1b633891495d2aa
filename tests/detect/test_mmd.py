"""Grosse et al.'s MMD test: the statistic, the permutation p-value, the detector, the power."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import pairwise_auc
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.mmd import MMDTest, median_bandwidth, mmd_power, mmd_test
from vulnscope.detect.registry import DETECTORS
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import pretrained


def _direct_mmd(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))

    n, m = len(x), len(y)
    xx = sum(k(a, b) for a in x for b in x) / n**2
    yy = sum(k(a, b) for a in y for b in y) / m**2
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


def test_statistic_and_p_value_match_a_direct_permutation_test():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 1, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(5, 1, 3, generator=generator, dtype=torch.float64) + 0.7
    pool = torch.cat([x, y]).flatten(1).numpy()
    squared = [((a - b) ** 2).sum() for i, a in enumerate(pool) for b in pool[i + 1 :]]
    sigma = math.sqrt(float(np.median(squared)) / 2)
    assert math.isclose(median_bandwidth(torch.cat([x, y])), sigma, rel_tol=1e-12)
    statistic, p_value = mmd_test(x, y, permutations=30, seed=7)
    observed = _direct_mmd(pool[:6], pool[6:], sigma)
    assert math.isclose(statistic, observed, rel_tol=1e-9)
    permutations = torch.Generator().manual_seed(7)
    exceed = 0
    for _ in range(30):
        order = torch.randperm(11, generator=permutations).numpy()
        exceed += _direct_mmd(pool[order[:6]], pool[order[6:]], sigma) >= observed - 1e-12
    assert p_value == (1 + exceed) / 31
    assert mmd_test(x, y, bandwidth=0.8, permutations=5)[0] == pytest.approx(
        _direct_mmd(pool[:6], pool[6:], 0.8), rel=1e-9
    )


def test_detector_scores_separate_pgd_examples_and_average_to_the_statistic(tmp_path):
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    clean, labels = test.x[:100], test.y[:100]
    adversarial = PGD(eps=0.2, steps=10, seed=0)(model, clean, labels).x_adv
    detector = MMDTest().fit(model, train.x[:300], train.y[:300])
    assert DETECTORS["mmd"] is MMDTest and detector.set_level
    with torch.no_grad():
        clean_scores, adversarial_scores = detector.score(clean), detector.score(adversarial)
    auc = pairwise_auc(clean_scores, adversarial_scores)
    assert auc > 0.7, auc
    statistic, _ = detector.test(adversarial[:40])
    assert float(detector.score(adversarial[:40]).mean()) == pytest.approx(statistic, rel=1e-4)
    assert detector.test(adversarial[:40])[1] < 0.05 < detector.test(test.x[200:240])[1]
    power = mmd_power(test.x[100:], adversarial, sizes=[5, 40], trials=10, permutations=100)
    assert power[40] >= 0.8 and power[5] < power[40], power
    detector.threshold_at(0.1, clean)
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert again.threshold == detector.threshold and again.scale == 0.5
    assert torch.equal(again.score(adversarial), detector.score(adversarial))


def test_bad_samples_are_refused():
    with pytest.raises(InvalidArgumentError, match=r"y must have x's feature shape \(3,\)"):
        mmd_test(torch.rand(4, 3), torch.rand(4, 2))
    with pytest.raises(InvalidArgumentError, match="a sample of 9 needs at least 9"):
        mmd_power(torch.rand(8, 3), torch.rand(20, 3), sizes=[9])
