"""Li and Li's mean-blur filter as a detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import pairwise_auc
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.detect.base import load_detector, save_detector
from vulnscope.detect.blur import MeanBlur, mean_blur
from vulnscope.detect.registry import DETECTORS
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import pretrained


def test_blur_is_the_mean_over_the_window_inside_the_image():
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = np.stack(
        [
            [
                ndimage.generic_filter(channel, np.nanmean, size=3, mode="constant", cval=np.nan)
                for channel in image
            ]
            for image in x.numpy()
        ]
    )
    assert np.allclose(mean_blur(x).numpy(), reference)


def test_separates_pgd_examples_and_round_trips(tmp_path):
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    clean, labels = test.x[:100], test.y[:100]
    # examples just across the boundary (PGD stopped at the first adversarial iterate), as
    # the paper's L-BFGS ones: blurring undoes those; PGD's last iterates, deep inside the
    # wrong class, survive it more often (AUC ~0.63 at this budget)
    attack = PGD(eps=0.2, steps=10, early_stop=True, seed=0)
    adversarial = attack(model, clean, labels).x_adv
    detector = MeanBlur().fit(model, train.x[:20], train.y[:20])
    assert DETECTORS["blur"] is MeanBlur
    with torch.no_grad():
        clean_scores, adversarial_scores = detector.score(clean), detector.score(adversarial)
        probabilities = torch.softmax(model(clean), 1)
        blurred = torch.softmax(model(mean_blur(clean)), 1)
    auc = pairwise_auc(clean_scores, adversarial_scores)
    assert auc > 0.7, auc
    changed = probabilities.argmax(1) != blurred.argmax(1)
    expected = changed.float() + (probabilities - blurred).abs().sum(1)
    assert torch.allclose(clean_scores, expected)
    detector.threshold_at(0.1, clean)
    again = load_detector(save_detector(detector, tmp_path / "d.safetensors"), model)
    assert again.threshold == detector.threshold and again.size == 3
    assert torch.equal(again.score(adversarial), adversarial_scores)


def test_an_even_window_is_refused():
    with pytest.raises(InvalidArgumentError, match="size must be an odd window side, got 4"):
        MeanBlur(size=4)
