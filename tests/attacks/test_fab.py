from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import affine_binary_classifier, random_inputs, tiny_classifier
from vulnscope.attacks import FAB
from vulnscope.attacks.fab import fab_step
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

BOUNDS = (-100.0, 100.0)  # wide: the box never blocks the minimal perturbation
MARGINS = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}
ORDER = {"linf": np.inf, "l2": 2, "l1": 1}


def test_first_step_from_the_original_point_extrapolates_its_projection():
    """At x1 = x0 both projections coincide, so the step is x0 + eta * delta."""
    _, x, w = affine_binary_classifier(MARGINS)
    gap = x @ w  # = -margin
    step = fab_step(x, x, gap, w.expand_as(x), norm="l2", bounds=BOUNDS, alpha_max=0.1, eta=1.05)
    minimal = (MARGINS / w.norm())[:, None] * w / w.norm()
    torch.testing.assert_close(step, x + 1.05 * minimal)


@pytest.mark.parametrize(
    ("alpha_max", "expected"),
    [(1.0, 2 / 3 * 1.025 + 1 / 3 * 1.05), (0.1, 0.9 * 1.025 + 0.1 * 1.05)],
)
def test_the_bias_towards_the_original_point_follows_the_two_distances(alpha_max, expected):
    """Halfway to the hyperplane |delta| = |delta_orig| / 2, so alpha = 1/3 unless capped."""
    _, x, w = affine_binary_classifier(MARGINS, seed=1)
    minimal = (MARGINS / w.norm())[:, None] * w / w.norm()
    x1 = x + 0.5 * minimal
    step = fab_step(
        x, x1, x1 @ w, w.expand_as(x), norm="l2", bounds=BOUNDS, alpha_max=alpha_max, eta=1.05
    )
    # (1 - a)(x1 + 1.05 minimal / 2) + a (x + 1.05 minimal) = x + ((1 - a) 1.025 + a 1.05) minimal
    torch.testing.assert_close(step, x + expected * minimal)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_reaches_the_closed_form_minimal_perturbation(norm):
    model, x, w = affine_binary_classifier(MARGINS, seed=2)
    n, steps = x.shape[0], 20
    result = FAB(norm=norm, steps=steps, bounds=BOUNDS)(model, x, torch.zeros(n, dtype=torch.int64))
    minimal = MARGINS / torch.linalg.vector_norm(w, ord=DUAL[norm])
    assert result.success.all()
    assert (result.norms >= minimal * (1 - 1e-9)).all()  # nothing smaller succeeds
    assert (result.norms <= minimal * 1.01).all()
    # Without a cap, every sample runs every step: one boundary, one backward pass each.
    assert result.gradient_evals == n * steps
    assert result.forward_evals == n + 2 * n * steps


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_with_a_cap_it_stops_once_inside_and_returns_x_where_nothing_fits(norm):
    model, x, w = affine_binary_classifier(MARGINS, seed=3)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    minimal = MARGINS / torch.linalg.vector_norm(w, ord=DUAL[norm])
    eps = float(minimal[1]) * 1.2
    result = FAB(norm=norm, eps=eps, steps=50, bounds=BOUNDS)(model, x, y)
    assert result.success.tolist() == [True, True, False]
    assert (result.norms <= eps * (1 + 1e-9)).all()
    assert torch.equal(result.x_adv[2], x[2])
    # The first two stop at their first success inside the ball (step one: 1.05 minimal).
    assert result.gradient_evals == 1 + 1 + 50


def test_targeted_on_two_classes_is_the_untargeted_closed_form():
    model, x, w = affine_binary_classifier(MARGINS, seed=4)
    n = x.shape[0]
    y, target = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.int64)
    result = FAB(norm="l2", steps=20, targeted=True, bounds=BOUNDS)(model, x, y, target=target)
    minimal = MARGINS / w.norm()
    assert result.success.all()
    assert (result.norms <= minimal * 1.01).all() and (result.norms >= minimal * (1 - 1e-9)).all()


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_reaches_every_target_of_an_affine_model(norm, rank):
    """Also targets whose region is entered across two boundaries at once."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(6, 4)).double().eval()
    x = random_inputs(5, 40, (6,), (-1.0, 1.0))
    logits = model(x)
    y, target = logits.argmax(1), logits.argsort(1, descending=True)[:, rank]
    result = FAB(norm=norm, steps=50, targeted=True, bounds=BOUNDS)(model, x, y, target=target)
    assert result.success.all()
    assert torch.equal(model(result.x_adv).argmax(1), target)
    untargeted = FAB(norm=norm, steps=50, bounds=BOUNDS)(model, x, y)
    assert (untargeted.norms <= result.norms * 1.01).all()


def test_targeted_costs_one_backward_pass_per_step():
    model = tiny_classifier(6, (1, 2, 3), classes=5)
    x = random_inputs(6, 4, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    steps = 7
    untargeted = FAB(steps=steps)(model, x, y)
    targeted = FAB(steps=steps, targeted=True)(model, x, y, target=(y + 1) % 5)
    assert untargeted.gradient_evals == 4 * 4 * steps  # every other class
    assert targeted.gradient_evals == 4 * steps


def test_restarts_keep_the_smallest_and_follow_the_seed():
    model = tiny_classifier(7, (1, 3, 3), classes=4, hidden=16)
    x = random_inputs(7, 10, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    single = FAB(steps=15)(model, x, y)
    several = FAB(steps=15, restarts=3, seed=3)(model, x, y)
    # The first run starts at x either way; later runs only ever improve on it.
    found = single.success
    assert not (found & ~several.success).any()
    assert (several.norms[found] <= single.norms[found]).all()
    again = FAB(steps=15, restarts=3, seed=3)(model, x, y)
    assert torch.equal(again.x_adv, several.x_adv)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_starts_lie_at_the_given_distance(norm):
    x0 = random_inputs(8, 5, (7,), BOUNDS) * 0.01
    radius = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    attack = FAB(norm=norm, bounds=BOUNDS)
    start = attack._random_start(x0, radius, torch.Generator().manual_seed(0))
    distance = torch.linalg.vector_norm(start - x0, ord=ORDER[norm], dim=1)
    torch.testing.assert_close(distance, radius)


def test_samples_already_adversarial_are_returned_unchanged():
    model = tiny_classifier(9, (1, 2, 3), classes=4)
    x = random_inputs(9, 5, (1, 2, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    result = FAB(steps=5)(model, x, (y + 1) % 4)
    assert torch.equal(result.x_adv, x) and result.success.all()
    assert result.gradient_evals == 0


def test_the_box_is_respected_with_pixels_on_the_bounds():
    model = tiny_classifier(10, (1, 3, 3), classes=5, hidden=16)
    x = random_inputs(10, 30, (1, 3, 3), (0.0, 1.0)).round()
    y = model(x).argmax(1)
    for norm in ("linf", "l2", "l1"):
        result = FAB(norm=norm, steps=30)(model, x, y)
        assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all()
        assert result.success.float().mean() >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"steps": 0}, InvalidArgumentError, "steps must be an integer >= 1, got 0"),
        ({"restarts": 0}, InvalidArgumentError, "restarts must be an integer >= 1, got 0"),
        ({"restarts": 1.5}, InvalidTypeError, "restarts must be an integer, got 1.5"),
        ({"alpha_max": -0.1}, InvalidArgumentError, "alpha_max must be >= 0.0, got -0.1"),
        ({"alpha_max": 1.5}, InvalidArgumentError, r"alpha_max must be in \[0, 1\], got 1.5"),
        ({"eta": 0.9}, InvalidArgumentError, "eta must be >= 1.0, got 0.9"),
        ({"beta": 0.0}, InvalidArgumentError, "beta must be > 0.0, got 0.0"),
        ({"beta": 1.2}, InvalidArgumentError, r"beta must be in \(0, 1\], got 1.2"),
        ({"norm": "l0"}, InvalidArgumentError, r"norm must be one of \['linf', 'l2', 'l1'\]"),
        ({"seed": -1}, InvalidArgumentError, "seed must be an integer >= 0, got -1"),
        ({"eta": "big"}, InvalidTypeError, "eta must be a real number, got 'big'"),
    ],
)
def test_validates_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        FAB(**kwargs)


def test_hyperparameters_round_trip():
    attack = FAB(norm="l2", steps=9, restarts=2, alpha_max=0.2, eta=1.1, beta=0.8, seed=4)
    assert attack.replace(eta=1.2).get_params() == {**attack.get_params(), "eta": 1.2}
    assert attack.requires_eps is False
