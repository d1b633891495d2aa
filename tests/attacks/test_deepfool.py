from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import affine_binary_classifier, random_inputs, tiny_classifier
from vulnscope.attacks import DeepFool
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

BOUNDS = (-100.0, 100.0)  # wide: the box never blocks the minimal perturbation
MARGINS = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
DUAL = {"l2": 2.0, "linf": 1.0}


def _affine_multiclass(classes=4, dim=6, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(dim, classes)).double()
    return model.eval()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_one_step_reaches_the_closed_form_minimal_perturbation(norm):
    model, x, w = affine_binary_classifier(MARGINS)
    n = x.shape[0]
    result = DeepFool(norm=norm, overshoot=0.02, refine=0, bounds=BOUNDS)(
        model, x, torch.zeros(n, dtype=torch.int64)
    )
    minimal = MARGINS / torch.linalg.vector_norm(w, ord=DUAL[norm])
    assert result.success.all()
    torch.testing.assert_close(result.norms, 1.02 * minimal, rtol=1e-12, atol=0)
    unit = w / w.norm() if norm == "l2" else w.sign()  # the direction of the minimal step
    expected = x + 1.02 * minimal[:, None] * unit
    torch.testing.assert_close(result.x_adv, expected, rtol=0, atol=1e-12)
    # One linearisation (one backward pass: two classes, one boundary) and its check.
    assert result.gradient_evals == n
    assert result.forward_evals == 3 * n


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_refine_removes_the_overshoot_by_bisection(norm):
    model, x, w = affine_binary_classifier(MARGINS, seed=1)
    n, refine = x.shape[0], 12
    result = DeepFool(norm=norm, overshoot=0.02, refine=refine, bounds=BOUNDS)(
        model, x, torch.zeros(n, dtype=torch.int64)
    )
    minimal = MARGINS / torch.linalg.vector_norm(w, ord=DUAL[norm])
    assert result.success.all()
    assert (result.norms >= minimal * (1 - 1e-12)).all()  # nothing smaller succeeds
    assert (result.norms <= minimal * (1 + 1.02 * 2.0**-refine)).all()
    assert result.gradient_evals == n
    assert result.forward_evals == (3 + refine) * n  # bisection: forward passes only


def test_targeted_on_two_classes_is_the_untargeted_closed_form():
    model, x, w = affine_binary_classifier(MARGINS, seed=2)
    n = x.shape[0]
    y, target = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
    attack = DeepFool(norm="l2", refine=0, bounds=BOUNDS, targeted=True)
    result = attack(model, x, y, target=target)
    assert result.success.all()
    torch.testing.assert_close(result.norms, 1.02 * MARGINS / w.norm(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_reaches_every_target_of_an_affine_model(norm):
    model = _affine_multiclass(seed=3)
    x = random_inputs(3, 16, (6,), (-1.0, 1.0))
    y = model(x).argmax(1)
    target = (y + 1 + torch.arange(16) % 3) % 4
    targeted = DeepFool(norm=norm, targeted=True, bounds=BOUNDS)(model, x, y, target=target)
    assert targeted.success.all()
    assert torch.equal(model(targeted.x_adv).argmax(1), target)
    # The untargeted minimal perturbation is no larger than any targeted one.
    untargeted = DeepFool(norm=norm, bounds=BOUNDS)(model, x, y)
    assert untargeted.success.all()
    assert (untargeted.norms <= targeted.norms * (1 + 1e-3)).all()


def test_candidates_limit_the_backward_passes_per_step():
    """Per step: one pass with a graph, one backward per rival, one check forward."""
    model = tiny_classifier(4, (1, 2, 3), classes=4)
    x = random_inputs(4, 10, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    n = x.shape[0]
    for candidates, rivals in [(2, 1), (3, 2), (None, 3)]:
        result = DeepFool(candidates=candidates, refine=0, steps=20)(model, x, y)
        row_steps = (result.forward_evals - n) // 2
        assert result.gradient_evals == rivals * row_steps
        assert row_steps >= n


def test_samples_already_adversarial_are_returned_unchanged():
    model = tiny_classifier(5, (1, 2, 3), classes=4)
    x = random_inputs(5, 6, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    wrong = (y + 1) % 4
    result = DeepFool()(model, x, wrong)
    assert torch.equal(result.x_adv, x) and result.success.all()
    assert result.gradient_evals == 0
    target = DeepFool(targeted=True)(model, x, y, target=y)
    assert torch.equal(target.x_adv, x) and target.success.all()


def test_a_sample_that_cannot_be_fooled_returns_x():
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.zero_()  # a constant classifier: no boundary to reach
        model.bias.copy_(torch.tensor([2.0, 0.5], dtype=torch.float64))
    x = random_inputs(6, 2, (3,), (0.0, 1.0))
    result = DeepFool(steps=5)(model.eval(), x, torch.zeros(2, dtype=torch.int64))
    assert torch.equal(result.x_adv, x) and not result.success.any()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_eps_caps_the_perturbation(norm):
    model, x, w = affine_binary_classifier(MARGINS, seed=7)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    minimal = MARGINS / torch.linalg.vector_norm(w, ord=DUAL[norm])
    eps = float(minimal[1]) * 1.01  # above the first two minimal perturbations only
    result = DeepFool(norm=norm, eps=eps, bounds=BOUNDS)(model, x, y)
    assert result.success.tolist() == [True, True, False]
    assert (result.norms <= eps * (1 + 1e-9)).all()
    assert torch.equal(result.x_adv[2], x[2])  # nothing found within the cap: x


def test_the_box_does_not_stall_the_trajectory():
    """Steps pushing pixels at 0 outwards lose part of their length to clipping."""
    model = tiny_classifier(8, (1, 3, 3), classes=5, hidden=16)
    x = random_inputs(8, 40, (1, 3, 3), (0.0, 1.0)).round()  # every pixel on a bound
    y = model(x).argmax(1)
    result = DeepFool(steps=50)(model, x, y)
    assert result.success.float().mean() >= 0.9


def test_is_deterministic_and_batch_independent():
    model = tiny_classifier(9, (1, 2, 3), classes=5, hidden=16)
    x = random_inputs(9, 8, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    attack = DeepFool(norm="linf")
    batch = attack(model, x, y)
    assert torch.equal(attack(model, x, y).x_adv, batch.x_adv)
    for i in range(x.shape[0]):
        alone = attack(model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": 0}, InvalidArgumentError, "steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, InvalidTypeError, "steps must be an integer, got 2.5"),
        ({"overshoot": -0.1}, InvalidArgumentError, "overshoot must be >= 0.0, got -0.1"),
        ({"candidates": 1}, InvalidArgumentError, "candidates must be an integer >= 2, got 1"),
        ({"candidates": "all"}, InvalidTypeError, "candidates must be an integer, got 'all'"),
        ({"refine": -1}, InvalidArgumentError, "refine must be an integer >= 0, got -1"),
        ({"norm": "l1"}, InvalidArgumentError, r"norm must be one of \['l2', 'linf'\]"),
        ({"eps": -1.0}, InvalidArgumentError, "eps must be >= 0.0, got -1.0"),
        ({"targeted": 1}, InvalidTypeError, "targeted must be True or False, got 1"),
    ],
)
def test_validates_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        DeepFool(**kwargs)


def test_hyperparameters_round_trip():
    attack = DeepFool(norm="linf", steps=7, overshoot=0.05, candidates=3, refine=2)
    assert attack.replace(steps=9).get_params() == {**attack.get_params(), "steps": 9}
    assert attack.requires_eps is False
