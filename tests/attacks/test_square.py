"""Square: gradient-free, within its query budget, and right where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import Square
from vulnscope.attacks.square import _bump, square_fraction
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

BOUNDS = (-100.0, 100.0)  # wide, so that the box never blocks the minimal perturbation


def _linear_problem(dim=10, n=6, seed=0, margin=1.0):
    """Logits (0, w.x + c) at points with w.x + c = -margin: class 0, as in test_closed_form."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=generator, dtype=torch.float64)
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.tensor([0.0, 0.3], dtype=torch.float64))
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    x = x - ((x @ w + 0.3 + margin) / (w @ w))[:, None] * w
    return model.eval(), x, torch.zeros(n, dtype=torch.int64), w


class _NoGradients(nn.Module):
    """Refuses to run with gradients enabled or on inputs that require them."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.register_full_backward_hook(self._fail)

    @staticmethod
    def _fail(*args):
        raise AssertionError("backward was called")

    def forward(self, x):
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("the model was called with gradients enabled")
        return self.inner(x)


class _Calls(nn.Module):
    """Counts forward calls and rows."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls, self.rows = inner, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.inner(x)


class _Unbreakable(nn.Module):
    """Predicts class 0 with a margin no perturbation inside the bounds can overcome."""

    def forward(self, x):
        score = x.flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([100.0 + 0 * score, score, -score], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_square_never_asks_for_a_gradient(norm, targeted):
    model = _NoGradients(tiny_classifier(0, (1, 4, 4), classes=4)).eval()
    x = random_inputs(0, 5, (1, 4, 4), (0.0, 1.0))
    y = torch.tensor([0, 1, 2, 3, 0])
    target = (y + 1) % 4 if targeted else None
    result = Square(norm=norm, eps=0.3, queries=40, targeted=targeted)(model, x, y, target=target)
    assert result.gradient_evals == 0
    assert not result.x_adv.requires_grad
    assert Square.gradient_free


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 3])
def test_square_spends_exactly_its_query_budget_on_samples_it_cannot_break(norm, restarts):
    model = _Calls(_Unbreakable()).double().eval()
    x = random_inputs(1, 4, (1, 5, 5), (0.0, 1.0))
    y = torch.zeros(4, dtype=torch.int64)
    attack = Square(norm=norm, eps=0.5, queries=37, restarts=restarts, skip_repeats=False)
    result = attack(model, x, y)
    assert not result.success.any()
    assert result.forward_evals == restarts * 37 * 4
    # plus the base class's validation pass and its final scoring pass
    assert model.calls == restarts * 37 + 2
    assert model.rows == (restarts * 37 + 2) * 4


def test_square_stops_on_a_sample_at_its_first_adversarial_query():
    model, x, y, w = _linear_problem(seed=1)
    minimal = 1.0 / float(w.abs().sum())
    result = Square(eps=3 * minimal, queries=500, bounds=BOUNDS)(model, x, y)
    assert result.success.all()
    assert result.forward_evals < 500 * x.shape[0] // 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_square_breaks_the_affine_model_just_above_the_minimal_budget(seed):
    model, x, y, w = _linear_problem(seed=seed)
    minimal = 1.0 / float(w.abs().sum())  # m / |w|_1, reached at the corner x + eps sign(w)
    attack = Square(eps=1.02 * minimal, queries=300, bounds=BOUNDS, seed=seed)
    result = attack(model, x, y)
    assert result.success.all()
    assert (result.norms <= 1.02 * minimal * (1 + 1e-12)).all()
    below = attack.replace(eps=0.98 * minimal, skip_repeats=False)(model, x, y)
    assert not below.success.any()
    assert below.forward_evals == 300 * x.shape[0]


def test_l2_square_breaks_the_affine_model_above_the_minimal_budget():
    model, x, y, w = _linear_problem(seed=3)
    minimal = 1.0 / float(w.norm())  # m / |w|_2
    attack = Square(norm="l2", eps=1.3 * minimal, queries=400, bounds=BOUNDS)
    result = attack(model, x, y)
    assert result.success.all()
    assert (result.norms <= 1.3 * minimal * (1 + 1e-9)).all()
    assert not attack.replace(eps=0.99 * minimal)(model, x, y).success.any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", [None, "margin", "ce"])
def test_targeted_square_reaches_the_target(norm, loss):
    model = tiny_classifier(4, (1, 6, 6), classes=4)
    x = random_inputs(4, 6, (1, 6, 6), (0.0, 1.0))
    y = model(x).argmax(1)
    target = (y + 1) % 4
    eps = 0.5 if norm == "linf" else 2.0
    result = Square(norm=norm, eps=eps, queries=300, loss=loss, targeted=True)(
        model, x, y, target=target
    )
    assert result.success.all()
    assert torch.equal(model(result.x_adv).argmax(1), target)


@pytest.mark.parametrize("shape", [(12,), (3, 5), (2, 5, 5)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_attacks_flat_inputs_one_channel_images_and_colour_images(shape, norm):
    model = tiny_classifier(5, shape, classes=3)
    x = random_inputs(5, 4, shape, (0.0, 1.0))
    y = model(x).argmax(1)
    result = Square(norm=norm, eps=0.4 if norm == "linf" else 1.5, queries=200)(model, x, y)
    assert result.success.any()
    assert result.x_adv.shape == x.shape
    assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all()


def test_linf_square_moves_features_to_the_corners_of_the_ball():
    model = tiny_classifier(6, (2, 4, 4), classes=3)
    x = random_inputs(6, 5, (2, 4, 4), (0.2, 0.8))  # away from the bounds: no clipping
    y = model(x).argmax(1)
    result = Square(eps=0.1, queries=50)(model, x, y)
    delta = (result.x_adv - x).abs()
    torch.testing.assert_close(delta, torch.full_like(delta, 0.1))


def test_square_with_zero_budget_returns_the_inputs_without_queries():
    model = tiny_classifier(0, (1, 3, 3), classes=3)
    x = random_inputs(0, 3, (1, 3, 3), (0.0, 1.0))
    result = Square(eps=0.0, queries=20)(model, x, torch.tensor([0, 1, 2]))
    assert torch.equal(result.x_adv, x)
    assert result.forward_evals == 0


def test_square_same_seed_same_result_and_another_seed_another():
    model = tiny_classifier(8, (1, 5, 5), classes=4)
    x = random_inputs(8, 6, (1, 5, 5), (0.0, 1.0))
    y = model(x).argmax(1)
    first = Square(norm="l2", eps=0.2, queries=60, seed=3)(model, x, y)
    again = Square(norm="l2", eps=0.2, queries=60, seed=3)(model, x, y)
    other = Square(norm="l2", eps=0.2, queries=60, seed=4)(model, x, y)
    assert torch.equal(first.x_adv, again.x_adv)
    assert not torch.equal(first.x_adv, other.x_adv)


def test_the_schedule_of_p_is_the_papers():
    # p_init halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000 iterations
    changes = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    assert square_fraction(0.8, 0, 10_000) == 0.8
    for halvings, last in enumerate(changes):
        assert square_fraction(0.8, last, 10_000) == 0.8 / 2**halvings
        assert square_fraction(0.8, last + 1, 10_000) == 0.8 / 2 ** (halvings + 1)
    assert square_fraction(0.8, 9_999, 10_000) == 0.8 / 512
    assert square_fraction(0.8, 250, 5000) == 0.8 / 8  # rescaled: 250 of 5000 is 500 of 10,000


def _paper_bump(s):
    """meta_pseudo_gaussian_pert of the authors' code (square-attack, attack.py), untransposed."""

    def rectangles(x, y):
        delta = np.zeros([x, y])
        x_c, y_c = x // 2 + 1, y // 2 + 1
        corner = [x_c - 1, y_c - 1]
        for counter in range(max(x_c, y_c)):
            delta[
                max(corner[0], 0) : min(corner[0] + (2 * counter + 1), x),
                max(0, corner[1]) : min(corner[1] + (2 * counter + 1), y),
            ] += 1.0 / (counter + 1) ** 2
            corner[0] -= 1
            corner[1] -= 1
        return delta / np.sqrt(np.sum(delta**2))

    delta = np.zeros([s, s])
    delta[: s // 2] = rectangles(s // 2, s)
    delta[s // 2 :] = rectangles(s - s // 2, s) * (-1)
    return delta / np.sqrt(np.sum(delta**2))


@pytest.mark.parametrize("side", [2, 3, 4, 5, 7, 11])
def test_the_l2_bump_is_the_papers_pseudo_gaussian(side):
    np.testing.assert_allclose(_bump(side, side).numpy(), _paper_bump(side), atol=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"queries": 0}, InvalidArgumentError, "queries must be an integer >= 1, got 0"),
        ({"queries": 10.0}, InvalidTypeError, r"queries must be an integer, got 10.0 \(float\)"),
        ({"p_init": 0.0}, InvalidArgumentError, r"p_init must be > 0.0, got 0.0"),
        ({"p_init": 1.5}, InvalidArgumentError, r"p_init must be in \(0, 1\], got 1.5"),
        ({"restarts": 0}, InvalidArgumentError, "restarts must be an integer >= 1, got 0"),
        ({"loss": "dlr"}, InvalidArgumentError, r"loss must be one of \['margin', 'ce'\]"),
        ({"loss": 1}, InvalidTypeError, r"loss must be one of \['margin', 'ce'\], got 1"),
        ({"norm": "l1"}, InvalidArgumentError, r"norm must be one of \['linf', 'l2'\]"),
        ({"eps": -0.1}, InvalidArgumentError, "eps must be >= 0.0, got -0.1"),
        ({"targeted": 1}, InvalidTypeError, "targeted must be True or False, got 1"),
        ({"bounds": (1.0, 0.0)}, InvalidArgumentError, "bounds must satisfy low < high"),
        ({"seed": -1}, InvalidArgumentError, "seed must be an integer >= 0, got -1"),
    ],
)
def test_square_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Square(**{"eps": 0.1, **kwargs})


def test_square_needs_a_budget_and_an_image_like_shape():
    model = tiny_classifier(0, (1, 2, 2, 2), classes=3)
    x = random_inputs(0, 2, (1, 2, 2, 2), (0.0, 1.0))
    y = torch.tensor([0, 1])
    with pytest.raises(InvalidArgumentError, match="eps is not set"):
        Square()(model, x, y)
    with pytest.raises(InvalidArgumentError, match=r"Square needs inputs of shape \(N, D\)"):
        Square(eps=0.1)(model, x, y)


@pytest.mark.parametrize(
    ("shape", "targeted", "eps"), [((1, 3, 3), False, 0.002), ((2, 4, 4), True, 0.005)]
)
def test_skipping_repeated_linf_candidates_changes_nothing_but_the_evaluations(
    shape, targeted, eps
):
    # Small images have few distinct 1 x 1 updates: a long search meets many again. Steep
    # hidden units make the pixels interact: a rejected change can help once another
    # pixel has moved, so a record kept past a change of the best point would show.
    inner = tiny_classifier(4, shape, classes=4)
    with torch.no_grad():
        inner[1].weight.mul_(40.0)
    model = _Calls(inner).eval()
    x = random_inputs(5, 12, shape, (0.0, 1.0))
    y = torch.arange(12) % 4
    target = (y + 1) % 4 if targeted else None
    attack = Square(eps=eps, queries=400, targeted=targeted, seed=3)
    skipping = attack(model, x, y, target=target)
    model.rows = 0
    every = attack.replace(skip_repeats=False)(model, x, y, target=target)
    calls_every, model.rows = model.rows, 0
    attack(model, x, y, target=target)
    assert torch.equal(skipping.x_adv, every.x_adv)
    assert torch.equal(skipping.success, every.success)
    assert not every.success.all()  # some searches run to the end, where repeats pile up
    assert skipping.forward_evals < every.forward_evals / 2
    assert model.rows < calls_every / 2  # the model itself was asked less


def test_skip_repeats_is_validated():
    with pytest.raises(InvalidTypeError, match="skip_repeats"):
        Square(eps=0.1, skip_repeats="yes")
