"""The gradient-masking checks, each on a model built to show (or not show) its symptom."""

from __future__ import annotations

import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.evaluate.masking import (
    check_black_box_gap,
    check_gradients,
    check_outputs,
    check_single_step_gap,
)


def test_smooth_deterministic_logits_trigger_nothing():
    model = tiny_classifier(0, (1, 2, 3))
    x = random_inputs(0, 5, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    checks = [
        *check_outputs(model, x),
        check_gradients(model, x, y, torch.ones(5, dtype=torch.bool)),
    ]
    assert not any(check.triggered for check in checks)
    assert all(check.message == "" for check in checks)


def test_dropout_in_training_mode_is_randomised_and_the_mode_is_restored():
    model = nn.Sequential(tiny_classifier(1, (1, 2, 3)), nn.Dropout(0.5)).train()
    x = random_inputs(1, 8, (1, 2, 3), (0.0, 1.0))
    randomised = {c.name: c for c in check_outputs(model, x)}["randomised_outputs"]
    assert randomised.triggered and "EOT" in randomised.message
    assert model.training


def test_non_finite_gradients_are_counted_at_the_correct_points_only():
    class SquareRoot(nn.Module):
        """Logits (sqrt(x_0 - 0.5), 0, 0): the derivative is infinite at x_0 = 0.5."""

        def forward(self, x):
            first = torch.sqrt(x[:, 0] - 0.5)
            return torch.stack([first, torch.zeros_like(first), torch.zeros_like(first)], 1)

    x = torch.tensor([[0.5, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.1]], dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.int64)
    check = check_gradients(SquareRoot(), x, y, torch.tensor([True, True, False, False]))
    assert check.triggered
    assert "1 of 2 have a NaN or infinite gradient" in check.message
    assert "all-zero" not in check.message
    assert check_gradients(SquareRoot(), x, y, torch.zeros(4, dtype=torch.bool)) is None


def test_single_step_and_black_box_gaps():
    iterative = torch.tensor([True, False, False, True])
    same = torch.tensor([True, False, False, False])
    assert not check_single_step_gap(same, iterative, "FGSM").triggered
    gap = check_single_step_gap(torch.tensor([False, True, True, True]), iterative, "FGSM")
    assert gap.triggered and "FGSM broke 2 points" in gap.message
    assert not check_black_box_gap(0, 10, "Square").triggered
    assert "broke 3 of the 10 points" in check_black_box_gap(3, 10, "Square").message
