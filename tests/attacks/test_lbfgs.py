from __future__ import annotations

import pytest
import torch

from helpers import affine_binary_classifier, random_inputs, tiny_classifier
from vulnscope.attacks import LBFGS
from vulnscope.attacks.lbfgs import _loss
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

SHAPE = (1, 2, 3)
BOUNDS = (-5.0, 5.0)  # wide enough that the box never blocks the minimal perturbation
MARGINS = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)


def _problem(n: int = 6, seed: int = 0):
    model = tiny_classifier(seed, SHAPE, classes=4, hidden=16)
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    return model, x, model(x).argmax(1)


@pytest.mark.parametrize("seed", [0, 2])
def test_reaches_the_closed_form_minimal_perturbation(seed):
    model, x, w = affine_binary_classifier(MARGINS, seed=seed)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    minimal = MARGINS / w.norm()
    result = LBFGS(bounds=BOUNDS)(model, x, y)
    assert result.success.all()
    assert (result.norms >= minimal * (1 - 1e-9)).all()  # nothing smaller can succeed
    assert (result.norms <= 1.02 * minimal).all()
    cosine = torch.nn.functional.cosine_similarity(result.x_adv - x, w[None], dim=1)
    assert (cosine > 0.999).all()


def test_targeted_attack_reaches_the_target():
    model, x, y = _problem()
    target = (y + 1) % 4
    result = LBFGS(c_search_steps=6, max_iterations=50, targeted=True, bounds=BOUNDS)(
        model, x, y, target=target
    )
    assert result.success.all()
    assert torch.equal(model(result.x_adv).argmax(1), target)


def test_the_search_over_c_improves_on_a_single_c():
    model, x, y = _problem()
    attack = LBFGS(c_search_steps=8, max_iterations=50, initial_const=0.01, bounds=BOUNDS)
    single = attack.replace(c_search_steps=1)(model, x, y)
    searched = attack(model, x, y)
    assert single.success.all() and searched.success.all()
    # the first solve of the search is the single solve, and every sample keeps its best
    assert (searched.norms <= single.norms * (1 + 1e-9)).all()
    assert searched.norms.mean() < 0.5 * single.norms.mean()


def test_the_untargeted_loss_is_the_cross_entropy_towards_the_wrong_classes():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 30.0, -3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    p_true = logits.softmax(1)[:, 0]
    torch.testing.assert_close(_loss(logits, y, None), -torch.log1p(-p_true))
    # bounded below by 0, and nearly 0 once the sample is confidently misclassified
    assert _loss(logits, y, None)[1] < 1e-12
    target = torch.tensor([2, 1])
    expected = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(_loss(logits, y, target), expected)


def test_samples_already_misclassified_are_returned_unchanged():
    model, x, predicted = _problem()
    y = predicted.clone()
    y[:3] = (predicted[:3] + 1) % 4
    result = LBFGS(c_search_steps=4, max_iterations=30, bounds=BOUNDS)(model, x, y)
    assert torch.equal(result.x_adv[:3], x[:3])
    assert result.success.all()
    assert (result.norms[3:] > 0).all()


def test_the_cap_stops_the_search_and_bounds_the_result():
    model, x, y = _problem()
    attack = LBFGS(c_search_steps=6, max_iterations=50, bounds=BOUNDS)
    free = attack(model, x, y)
    eps = float(free.norms.median()) * 1.5
    capped = attack.replace(eps=eps)(model, x, y)
    assert (capped.norms <= eps * (1 + 1e-9)).all()
    # the same searches until a sample is within the cap (to the tolerance of solves that
    # share a batch); a point projected onto the ball may succeed too
    assert (capped.success >= (free.success & (free.norms <= eps))).all()
    assert capped.gradient_evals < free.gradient_evals


def test_evaluations_are_counted_per_sample():
    model, x, y = _problem(n=5)
    seen = {"forward": 0, "gradient": 0}

    def counted(inputs):
        seen["forward"] += inputs.shape[0]
        seen["gradient"] += inputs.shape[0] if inputs.requires_grad else 0
        return model(inputs)

    result = LBFGS(c_search_steps=3, max_iterations=20, bounds=BOUNDS)(counted, x, y)
    # the base class adds one validating and one scoring pass of its own, uncounted
    assert result.forward_evals == seen["forward"] - 2 * x.shape[0]
    assert result.gradient_evals == seen["gradient"] > 0
    # beyond the differentiated passes: the clean pass and one check per sample per solve
    assert result.forward_evals == result.gradient_evals + x.shape[0] + 3 * x.shape[0]


def test_is_deterministic():
    model, x, y = _problem(n=4)
    attack = LBFGS(c_search_steps=4, max_iterations=30, bounds=BOUNDS)
    assert torch.equal(attack(model, x, y).x_adv, attack(model, x, y).x_adv)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"norm": "linf"}, InvalidArgumentError, r"norm must be one of \['l2'\], got 'linf'"),
        ({"eps": -0.1}, InvalidArgumentError, r"eps must be >= 0.0, got -0.1"),
        ({"c_search_steps": 0}, InvalidArgumentError, r"c_search_steps must be an integer >= 1"),
        ({"c_search_steps": 1.5}, InvalidTypeError, r"c_search_steps must be an integer, got 1.5"),
        ({"max_iterations": 0}, InvalidArgumentError, r"max_iterations must be an integer >= 1"),
        ({"initial_const": -1.0}, InvalidArgumentError, r"initial_const must be > 0.0, got -1.0"),
        ({"initial_const": "1"}, InvalidTypeError, r"initial_const must be a real number"),
        ({"targeted": 0}, InvalidTypeError, r"targeted must be True or False"),
        ({"bounds": (0.0, 0.0)}, InvalidArgumentError, r"bounds must satisfy low < high"),
    ],
)
def test_every_argument_is_validated(kwargs, error, message):
    with pytest.raises(error, match=message):
        LBFGS(**kwargs)
