"""JSMA: the pair the saliency map picks, the gamma budget, targeted and untargeted modes."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import JSMA
from vulnscope.attacks.jsma import saliency_pairs
from vulnscope.errors import InvalidArgumentError, InvalidTypeError


def _brute_force_pair(alpha_1, beta_1, free, increase):
    """The paper's loop over all pairs of free features (strict >, so the first best wins)."""
    best, pair = 0.0, None
    for p, q in itertools.combinations(range(len(alpha_1)), 2):
        if not (free[p] and free[q]):
            continue
        alpha, beta = float(alpha_1[p] + alpha_1[q]), float(beta_1[p] + beta_1[q])
        salient = alpha > 0 > beta if increase else alpha < 0 < beta
        if salient and -alpha * beta > best:
            best, pair = -alpha * beta, (p, q)
    return pair


@pytest.mark.parametrize("increase", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_saliency_pairs_agree_with_the_papers_loop_over_all_pairs(seed, increase):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    b = torch.randn(5, 9, generator=generator, dtype=torch.float64)
    free = torch.rand(5, 9, generator=generator) < 0.7
    free[4] = False  # no free feature at all
    first, second, found = saliency_pairs(a, b, free, increase=increase)
    for n in range(5):
        expected = _brute_force_pair(a[n], b[n], free[n], increase)
        assert bool(found[n]) == (expected is not None)
        if expected is not None:
            assert (int(first[n]), int(second[n])) == expected


def _linear_model(classes=4, dim=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=generator, dtype=torch.float64))
        model.bias.zero_()
    return model.eval()


def _reference_first_pair(model, x, target, jacobian, theta):
    """The first pair, from autograd's full Jacobian of the logits or the softmax at x."""
    outputs = (lambda z: torch.softmax(model(z), 1)) if jacobian == "softmax" else model
    full = torch.autograd.functional.jacobian(outputs, x[None])[0, :, 0]  # (C, D)
    alpha_1 = full[target]
    beta_1 = full.sum(0) - full[target]
    return _brute_force_pair(alpha_1, beta_1, x < 1.0 if theta > 0 else x > 0.0, theta > 0)


@pytest.mark.parametrize("jacobian", ["logits", "softmax"])
@pytest.mark.parametrize("seed", range(3))
def test_on_a_linear_model_the_first_step_changes_the_pair_the_saliency_map_gives(seed, jacobian):
    # Class 0 (the rival) is predicted, class 1 is the target, classes 2 and 3 are out of the
    # race (bias -1000) and weigh little in the sum of the other outputs.
    model = _linear_model(seed=seed)
    x = torch.full((1, 10), 0.25, dtype=torch.float64)
    rival, target, theta = 0, 1, 0.5
    with torch.no_grad():
        model.weight[2:] *= 0.1
        model.bias.copy_(torch.tensor([0.0, -1.0, -1e3, -1e3]) - model(x)[0])
    p, q = _reference_first_pair(model, x[0], target, jacobian, theta)
    # Move the target's logit so that raising exactly that pair by theta makes it win.
    gain = theta * (model.weight[:, p] + model.weight[:, q]).detach()
    assert gain[target] > gain[rival]
    with torch.no_grad():
        model.bias[target] -= float(model(x)[0, target]) + 0.5 * float(gain[target] - gain[rival])
    assert _reference_first_pair(model, x[0], target, jacobian, theta) == (p, q)
    attack = JSMA(theta=theta, gamma=0.2, jacobian=jacobian, targeted=True)  # one pair
    result = attack(model, x, torch.tensor([rival]), target=torch.tensor([target]))
    assert result.success.all()
    assert (result.x_adv != x)[0].nonzero()[:, 0].tolist() == [p, q]
    torch.testing.assert_close(result.x_adv[0, [p, q]], torch.full((2,), 0.75).double())


@pytest.mark.parametrize("gamma", [0.05, 0.1, 0.25, 0.5])
def test_jsma_stops_at_gamma(gamma):
    model = tiny_classifier(2, (1, 4, 5), classes=5)
    x = random_inputs(2, 8, (1, 4, 5), (0.0, 1.0))
    y = model(x).argmax(1)
    result = JSMA(gamma=gamma, theta=0.3, targeted=True)(model, x, y, target=(y + 2) % 5)
    assert (result.changed_fraction <= gamma).all()
    pairs = int(gamma * 20) // 2
    assert (result.norms <= 2 * pairs).all()
    assert result.forward_evals <= (pairs + 1) * 8
    if pairs == 0:
        assert torch.equal(result.x_adv, x) and result.forward_evals == 0


def test_jsma_spends_its_whole_budget_on_a_target_it_cannot_reach():
    model = _linear_model(classes=3, dim=10)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([1e3, 0.0, -1e3], dtype=torch.float64))  # class 0 always
    x = torch.full((2, 10), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 0])
    result = JSMA(gamma=0.6, targeted=True)(model, x, y, target=torch.tensor([2, 2]))
    assert not result.success.any()
    assert torch.equal(result.x_adv, x)  # a failure returns the input
    assert result.forward_evals == (3 + 1) * 2  # 3 pairs, then the check of the last one
    assert result.gradient_evals == 2 * 3 * 2  # two vector-Jacobian products per step


@pytest.mark.parametrize("jacobian", ["logits", "softmax"])
def test_targeted_jsma_reaches_the_target(jacobian):
    # a model on which raising features (theta > 0) can reach every target
    model = tiny_classifier(3, (1, 4, 4), classes=4, hidden=16)
    x = random_inputs(3, 10, (1, 4, 4), (0.0, 1.0))
    y = model(x).argmax(1)
    target = (y + 1) % 4
    result = JSMA(gamma=1.0, jacobian=jacobian, targeted=True)(model, x, y, target=target)
    assert result.success.all()
    predicted = model(result.x_adv).argmax(1)
    assert torch.equal(predicted[result.success], target[result.success])
    assert ((result.x_adv >= x) | ~result.success[:, None, None, None]).all()


def test_untargeted_jsma_follows_the_targeted_attack_on_the_runner_up_class():
    model = tiny_classifier(4, (1, 4, 4), classes=4, hidden=16)
    x = random_inputs(4, 16, (1, 4, 4), (0.0, 1.0))
    y = model(x).argmax(1)
    runner_up = model(x).topk(2, dim=1).indices[:, 1]
    untargeted = JSMA(gamma=1.0, theta=0.4)(model, x, y)
    targeted = JSMA(gamma=1.0, theta=0.4, targeted=True)(model, x, y, target=runner_up)
    assert untargeted.success.float().mean() >= 0.8
    # Same steps until the first wrong class; where that is the runner-up, the same point.
    ended = model(untargeted.x_adv).argmax(1)
    same = untargeted.success & (ended == runner_up)
    assert same.any()
    assert torch.equal(untargeted.x_adv[same], targeted.x_adv[same])
    assert (untargeted.norms[untargeted.success] <= 16).all()


def test_jsma_leaves_samples_already_misclassified_or_at_the_target_alone():
    model = tiny_classifier(6, (6,), classes=3)
    x = random_inputs(6, 6, (6,), (0.0, 1.0))
    predicted = model(x).argmax(1)
    wrong = (predicted + 1) % 3
    untargeted = JSMA(gamma=1.0)(model, x, wrong)
    assert untargeted.success.all() and torch.equal(untargeted.x_adv, x)
    targeted = JSMA(gamma=1.0, targeted=True)(model, x, wrong, target=predicted)
    assert targeted.success.all() and torch.equal(targeted.x_adv, x)


def test_negative_theta_lowers_features_and_skips_those_at_the_lower_bound():
    model = tiny_classifier(7, (8,), classes=3)
    x = random_inputs(7, 6, (8,), (0.0, 1.0))
    x[:, :3] = 0.0  # cannot be lowered
    y = model(x).argmax(1)
    result = JSMA(theta=-0.25, gamma=1.0)(model, x, y)
    assert result.success.any()
    assert (result.x_adv <= x).all()
    assert torch.equal(result.x_adv[:, :3], x[:, :3])


def test_jsma_is_deterministic_and_counts_l0_norms():
    model = tiny_classifier(8, (1, 3, 3), classes=4)
    x = random_inputs(8, 5, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    first = JSMA(gamma=0.5)(model, x, y)
    again = JSMA(gamma=0.5)(model, x, y)
    assert torch.equal(first.x_adv, again.x_adv)
    assert first.norm == "l0"
    changed = (first.x_adv != x).flatten(1).sum(1).double()
    torch.testing.assert_close(first.norms, changed)
    torch.testing.assert_close(first.changed_fraction, changed / 9)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"theta": 0.0}, InvalidArgumentError, r"theta must be nonzero \(> 0 raises features\)"),
        ({"theta": "1"}, InvalidTypeError, r"theta must be a real number, got '1' \(str\)"),
        ({"theta": float("inf")}, InvalidArgumentError, "theta must be finite, got inf"),
        ({"gamma": 0.0}, InvalidArgumentError, r"gamma must be > 0.0, got 0.0"),
        ({"gamma": 1.5}, InvalidArgumentError, r"gamma must be in \(0, 1\], got 1.5"),
        ({"jacobian": "probs"}, InvalidArgumentError, r"jacobian must be one of \['logits', 'so"),
        ({"jacobian": None}, InvalidTypeError, r"jacobian must be one of .*, got None"),
        ({"targeted": "yes"}, InvalidTypeError, "targeted must be True or False, got 'yes'"),
        ({"bounds": (0.0,)}, InvalidTypeError, r"bounds must be a pair \(low, high\)"),
    ],
)
def test_jsma_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        JSMA(**kwargs)


def test_jsma_takes_no_budget_and_its_norm_is_l0():
    assert set(JSMA().get_params()) == {"theta", "gamma", "jacobian", "targeted", "bounds"}
    assert JSMA().norm == "l0" and JSMA().eps is None
    with pytest.raises(TypeError, match="eps"):
        JSMA(eps=0.1)
    model, x = tiny_classifier(0, (4,)), random_inputs(0, 2, (4,), (0.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="target is required"):
        JSMA(targeted=True)(model, x, torch.zeros(2, dtype=torch.int64))
