"""Shared data of the detector tests: the digits CNN, clean fitting data, attacked test digits."""

from __future__ import annotations

import pytest
from torch import Tensor

from vulnscope.attacks import FGSM, PGD
from vulnscope.data import load_digits
from vulnscope.models import pretrained


@pytest.fixture(scope="module")
def digits() -> dict[str, Tensor]:
    """The CNN, 500 training digits to fit on, 100 test digits and their FGSM/PGD examples."""
    model = pretrained("digits-cnn")
    train, test = load_digits("train"), load_digits("test")
    x, y = test.x[:100], test.y[:100]
    return {
        "model": model,
        "x": train.x[:500],
        "y": train.y[:500],
        "clean": x,
        "fgsm": FGSM(eps=0.1)(model, x, y).x_adv,
        "pgd": PGD(eps=0.1, steps=10, seed=1)(model, x, y).x_adv,
    }
