"""For deterministic settings, attacking a batch equals attacking each sample alone.

Equal up to rounding: a matrix product over 12 rows and over 1 row round differently in
the last bit, and where APGD compares two losses on a plateau (equal to 1e-16) that can
flip a step-size decision, moving the result by ~1e-8. Any real coupling between samples
(shared step sizes, shared stopping) moves it by the order of a step, 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import APGD, BIM, FGSM, PGD

SHAPE = (1, 3, 3)
DETERMINISTIC = {
    "FGSM": lambda norm: FGSM(norm=norm, eps=0.2),
    "BIM": lambda norm: BIM(norm=norm, eps=0.2, steps=10, step_size=0.03),
    "PGD-classic": lambda norm: PGD(norm=norm, eps=0.2, steps=10, random_start=False),
    "PGD-early-stop": lambda norm: PGD(
        norm=norm, eps=0.2, steps=10, random_start=False, early_stop=True
    ),
    "APGD": lambda norm: APGD(norm=norm, eps=0.2, steps=20, random_start=False),
    "APGD-DLR": lambda norm: APGD(norm=norm, eps=0.2, steps=20, loss="dlr", random_start=False),
}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_batch_equals_one_sample_at_a_time(name, norm):
    if name.startswith("APGD") and norm == "l1":
        pytest.skip("APGD supports linf and l2")
    model = tiny_classifier(7, SHAPE, classes=5, hidden=16)
    x = random_inputs(7, 12, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    attack = DETERMINISTIC[name](norm)
    batch = attack(model, x, y)
    for i in range(x.shape[0]):
        alone = attack(model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], atol=1e-6, rtol=0)
        assert bool(alone.success[0]) == bool(batch.success[i])
