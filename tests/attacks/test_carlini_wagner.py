from __future__ import annotations

import pytest
import torch

from helpers import affine_binary_classifier, random_inputs, tiny_classifier
from vulnscope.attacks import CarliniWagner
from vulnscope.attacks.losses import margin
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

SHAPE = (1, 2, 3)
BOUNDS = (-5.0, 5.0)  # wide enough that the box never blocks the minimal perturbation
MARGINS = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)


def test_l2_reaches_the_closed_form_minimal_perturbation():
    model, x, w = affine_binary_classifier(MARGINS)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    minimal = MARGINS / w.norm()
    attack = CarliniWagner(learning_rate=2e-3, bounds=BOUNDS)
    result = attack(model, x, y)
    assert result.success.all()
    assert (result.norms >= minimal * (1 - 1e-9)).all()  # nothing smaller can succeed
    assert (result.norms <= 1.02 * minimal).all()
    # and it moves along w, the normal of the decision boundary
    cosine = torch.nn.functional.cosine_similarity(result.x_adv - x, w[None], dim=1)
    assert (cosine > 0.98).all()


def test_linf_reaches_the_closed_form_minimal_perturbation():
    model, x, w = affine_binary_classifier(MARGINS, seed=2)
    y = torch.zeros(x.shape[0], dtype=torch.int64)
    minimal = MARGINS / w.abs().sum()
    attack = CarliniWagner(norm="linf", steps=30, learning_rate=1e-3, bounds=BOUNDS)
    result = attack(model, x, y)
    assert result.success.all()
    assert (result.norms >= minimal * (1 - 1e-9)).all()
    assert (result.norms <= 1.02 * minimal).all()


def _problem(n: int = 8, seed: int = 0):
    """A tiny 4-class MLP and inputs it classifies as ``y``; every class is reachable."""
    model = tiny_classifier(seed, SHAPE, classes=4, hidden=16)
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    return model, x, model(x).argmax(1)


def _fast(norm: str = "l2", **kwargs) -> CarliniWagner:
    """Few, long steps: in tanh space for L2, a fraction of the bounds' width for L∞."""
    rate = 0.03 if norm == "l2" else 0.006
    return CarliniWagner(
        norm=norm, steps=30, binary_search_steps=5, learning_rate=rate, bounds=BOUNDS, **kwargs
    )


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_targeted_attack_reaches_the_target(norm):
    model, x, y = _problem()
    target = (y + 1) % 4
    result = _fast(norm, targeted=True)(model, x, y, target=target)
    assert result.success.all()
    assert torch.equal(model(result.x_adv).argmax(1), target)
    untargeted = _fast(norm)(model, x, y)
    assert (untargeted.norms <= result.norms * (1 + 1e-9)).all()  # any class is nearer


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_confidence_is_honoured(norm):
    model, x, y = _problem()
    kappa = 0.2
    plain = _fast(norm)(model, x, y)
    confident = _fast(norm, confidence=kappa)(model, x, y)
    assert plain.success.all() and confident.success.all()
    with torch.no_grad():
        margins = margin(model(confident.x_adv), y, None)
    assert (margins >= kappa).all()
    assert (margin(model(plain.x_adv), y, None) < kappa).any()
    assert (confident.norms > plain.norms).all()


def test_binary_search_improves_on_a_single_constant():
    model, x, y = _problem()
    single = _fast(initial_const=10.0).replace(binary_search_steps=1)(model, x, y)
    searched = _fast(initial_const=10.0)(model, x, y)
    assert single.success.all() and searched.success.all()
    # the first run of the search is the single run, and every sample keeps its best
    assert (searched.norms <= single.norms * (1 + 1e-9)).all()
    assert searched.norms.mean() < 0.9 * single.norms.mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_a_batch_equals_one_sample_at_a_time(norm):
    """Every sample runs its own search; sharing the batch changes nothing but the cost."""
    model, x, y = _problem(n=3, seed=3)
    attack = _fast(norm).replace(steps=20, binary_search_steps=4)
    batch = attack(model, x, y)
    for i in range(x.shape[0]):
        alone = attack(model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], atol=1e-9, rtol=0)


def test_samples_already_misclassified_are_returned_unchanged():
    model, x, predicted = _problem(n=6)
    y = predicted.clone()
    y[:3] = (predicted[:3] + 1) % 4  # the first three are misclassified already
    result = _fast()(model, x, y)
    assert torch.equal(result.x_adv[:3], x[:3])
    assert result.success.all()
    assert (result.norms[3:] > 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_cap_stops_the_search_and_bounds_the_result(norm):
    model, x, y = _problem()
    free = _fast(norm)(model, x, y)
    eps = float(free.norms.median()) * 1.5
    capped = _fast(norm, eps=eps)(model, x, y)
    assert (capped.norms <= eps * (1 + 1e-9)).all()
    # the same search until a sample is within the cap (a projected point may succeed too)
    assert (capped.success >= (free.success & (free.norms <= eps))).all()
    assert capped.gradient_evals < free.gradient_evals


def test_evaluations_are_counted_per_sample():
    """One forward pass on the clean inputs, then one forward and backward pass per step."""
    model, x, y = _problem(n=5)
    seen = {"forward": 0, "gradient": 0}

    def counted(inputs):
        seen["forward"] += inputs.shape[0]
        seen["gradient"] += inputs.shape[0] if inputs.requires_grad else 0
        return model(inputs)

    result = _fast()(counted, x, y)
    # the base class adds one validating and one scoring pass of its own, uncounted
    assert result.forward_evals == seen["forward"] - 2 * x.shape[0]
    assert result.gradient_evals == seen["gradient"] > 0
    assert result.forward_evals == result.gradient_evals + x.shape[0]


def test_the_public_example_runs():
    model = tiny_classifier(4, SHAPE, classes=4, hidden=16)
    with torch.no_grad():
        model[3].weight.mul_(10.0)  # logits that move within the default learning rate
    x = random_inputs(4, 2, SHAPE, (0.3, 0.7))
    y = model(x).argmax(1)
    attack = CarliniWagner(norm="l2", steps=100, binary_search_steps=9, confidence=0.0, seed=0)
    assert attack(model, x, y).success.all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_same_seed_same_result(norm):
    model, x, y = _problem(n=4)
    first = _fast(norm, seed=0)(model, x, y)
    assert torch.equal(_fast(norm, seed=0)(model, x, y).x_adv, first.x_adv)
    assert torch.equal(_fast(norm, seed=1)(model, x, y).x_adv, first.x_adv)  # deterministic


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"norm": "l1"}, InvalidArgumentError, r"norm must be one of \['l2', 'linf'\], got 'l1'"),
        ({"eps": -0.1}, InvalidArgumentError, r"eps must be >= 0.0, got -0.1"),
        ({"steps": 0}, InvalidArgumentError, r"steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, InvalidTypeError, r"steps must be an integer, got 2.5"),
        (
            {"binary_search_steps": 0},
            InvalidArgumentError,
            r"binary_search_steps must be an integer >= 1, got 0",
        ),
        ({"initial_const": 0.0}, InvalidArgumentError, r"initial_const must be > 0.0, got 0.0"),
        ({"confidence": -1.0}, InvalidArgumentError, r"confidence must be >= 0.0, got -1.0"),
        ({"confidence": "high"}, InvalidTypeError, r"confidence must be a real number"),
        ({"learning_rate": 0}, InvalidArgumentError, r"learning_rate must be > 0.0, got 0"),
        ({"abort_early": 1}, InvalidTypeError, r"abort_early must be True or False, got 1"),
        ({"targeted": "yes"}, InvalidTypeError, r"targeted must be True or False"),
        ({"bounds": (1.0, 0.0)}, InvalidArgumentError, r"bounds must satisfy low < high"),
        ({"seed": -1}, InvalidArgumentError, r"seed must be an integer >= 0, got -1"),
    ],
)
def test_every_argument_is_validated(kwargs, error, message):
    with pytest.raises(error, match=message):
        CarliniWagner(**kwargs)
