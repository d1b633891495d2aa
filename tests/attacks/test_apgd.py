from __future__ import annotations

import pytest
import torch

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import APGD, PGD

SHAPE = (1, 3, 3)


def test_checkpoints_follow_the_paper_schedule(monkeypatch):
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 steps."""
    seen = []
    original = APGD._checkpoint

    def spy(self, walk, interval):
        seen.append(interval)
        original(self, walk, interval)

    monkeypatch.setattr(APGD, "_checkpoint", spy)
    model = tiny_classifier(0, SHAPE)
    x = random_inputs(0, 3, SHAPE, (0.0, 1.0))
    APGD(eps=0.01, steps=100, early_stop=False)(model, x, model(x).argmax(1))
    positions, fractions = [], [0.0, 0.22]
    while fractions[-1] < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    expected = [round(100 * p) for p in fractions[1:] if round(100 * p) <= 100]
    total = 0
    for interval in seen:
        total += interval
        positions.append(total)
    assert positions == expected[: len(positions)] and len(positions) == 8  # 22, 41, ..., 99


def test_step_size_halves_at_checkpoints_and_starts_at_twice_eps(monkeypatch):
    steps_seen = []
    original = APGD._checkpoint

    def spy(self, walk, interval):
        before = walk.step.clone()
        original(self, walk, interval)
        steps_seen.append((before, walk.step.clone()))

    monkeypatch.setattr(APGD, "_checkpoint", spy)
    model = tiny_classifier(1, SHAPE)
    x = random_inputs(1, 5, SHAPE, (0.0, 1.0))
    APGD(eps=0.05, steps=40, early_stop=False)(model, x, model(x).argmax(1))
    assert torch.allclose(steps_seen[0][0], torch.full((5,), 0.1, dtype=torch.float64))
    for before, after in steps_seen:
        assert ((after == before) | (after == before / 2)).all()


@pytest.mark.parametrize("loss", ["ce", "dlr"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_stop_changes_no_success(loss, norm):
    """Samples evolve independently, so stopping broken ones cannot change the others."""
    model = tiny_classifier(2, SHAPE, classes=5, hidden=16)
    x = random_inputs(2, 60, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    eps = 0.1 if norm == "linf" else 0.3
    stopped = APGD(norm=norm, eps=eps, steps=30, loss=loss, early_stop=True)(model, x, y)
    full = APGD(norm=norm, eps=eps, steps=30, loss=loss, early_stop=False)(model, x, y)
    assert torch.equal(stopped.success, full.success)
    assert 0 < int(full.success.sum()) < 60
    assert stopped.gradient_evals < full.gradient_evals


def test_apgd_is_at_least_as_strong_as_pgd_on_the_digits_cnn(digits_cnn, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    pgd = PGD(eps=0.1, steps=40, step_size=0.01, random_start=False)(digits_cnn, x, y)
    apgd = APGD(eps=0.1)(digits_cnn, x, y)
    assert apgd.success.sum() >= pgd.success.sum() - 2  # within one point of 200


def test_apgd_without_random_start_is_deterministic_in_its_inputs():
    model = tiny_classifier(3, SHAPE)
    x = random_inputs(3, 4, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    first = APGD(eps=0.1, steps=10, random_start=False, seed=0)(model, x, y)
    second = APGD(eps=0.1, steps=10, random_start=False, seed=99)(model, x, y)
    assert torch.equal(first.x_adv, second.x_adv)
