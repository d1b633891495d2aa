from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_inputs, reference_norm, tiny_classifier
from vulnscope.attacks import PGD, DeepFool, UniversalPerturbation
from vulnscope.attacks.universal import UniversalResult, fooling_rate
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, VulnscopeWarning

BOUNDS = (-100.0, 100.0)  # wide, so that the box never blocks the perturbation
DUAL = {"linf": "l1", "l2": "l2"}
SHAPE = (1, 2, 3)


def _linear_problem(norm, eps, seed=0, dim=12):
    """Logits (0, w.x + c); class 0 everywhere, with margins on both sides of eps |w|_*.

    Every point moves by the same w.v under a universal v, so the best v of the ball is
    eps sign(w) (Linf) or eps w / |w|_2 (L2), and it fools exactly the points whose
    margin is below eps |w|_*.
    """
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=generator, dtype=torch.float64)
    c = 0.3
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.tensor([0.0, c], dtype=torch.float64))
    reach = eps * float(reference_norm(w[None], DUAL[norm]))
    margins = reach * torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1.05, 1.3, 2.0, 4.0]).double()
    x = torch.randn(margins.numel(), dim, generator=generator, dtype=torch.float64)
    x = x - ((x @ w + c + margins) / (w @ w))[:, None] * w  # w.x + c = -margin
    best = eps * (w.sign() if norm == "linf" else w / w.norm())
    return model.eval(), x, torch.zeros(x.shape[0], dtype=torch.int64), best, margins < reach


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_on_a_linear_model_the_perturbation_is_the_closed_form(norm, batch_size):
    eps = 0.05
    model, x, y, best, foolable = _linear_problem(norm, eps)
    attack = UniversalPerturbation(
        norm=norm,
        eps=eps,
        batch_size=batch_size,
        max_epochs=3,
        target_fooling_rate=1.0,
        attack=DeepFool(norm=norm, bounds=BOUNDS),
        bounds=BOUNDS,
    )
    result = attack.fit(model, x, y)
    torch.testing.assert_close(result.perturbation, best, rtol=1e-9, atol=1e-12)
    assert torch.equal(result.fooled, foolable)
    assert result.fooling_rate == pytest.approx(0.6) and result.epochs == 3
    assert len(result.history) == 3 and max(result.history) == pytest.approx(0.6)
    # the attack's call returns x + v, fitted on the same data
    call = attack(model, x, y)
    torch.testing.assert_close(call.x_adv, x + result.perturbation)
    assert torch.equal(call.success, foolable)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_with_the_default_l2_steps_a_linf_perturbation_fools_the_same_points(batch_size):
    # L2 DeepFool steps along w, not sign(w): v climbs to the corner eps sign(w) over
    # several points; the first pass already fools every point within reach
    model, x, y, best, foolable = _linear_problem("linf", 0.05)
    result = UniversalPerturbation(
        eps=0.05, batch_size=batch_size, max_epochs=3, target_fooling_rate=1.0, bounds=BOUNDS
    ).fit(model, x, y)
    assert torch.equal(result.fooled, foolable)
    assert float(result.perturbation.abs().max()) <= 0.05
    w = model.weight[1].detach()
    assert float(result.perturbation @ w) >= 0.99 * float(best @ w)  # w.v nearly its maximum


def test_targeted_towards_the_other_class_is_the_same_closed_form():
    model, x, y, best, foolable = _linear_problem("linf", 0.05, seed=1)
    attack = UniversalPerturbation(
        eps=0.05,
        targeted=True,
        target_fooling_rate=1.0,
        max_epochs=2,
        bounds=BOUNDS,
        attack=DeepFool(norm="linf", targeted=True, bounds=BOUNDS),
    )
    result = attack.fit(model, x, y, target=torch.ones_like(y))
    torch.testing.assert_close(result.perturbation, best, rtol=1e-9, atol=1e-12)
    assert torch.equal(result.fooled, foolable) and result.targeted


def test_the_fit_stops_once_the_target_fooling_rate_is_reached():
    model, x, y, _, _ = _linear_problem("l2", 0.05, seed=2)
    result = UniversalPerturbation(
        norm="l2", eps=0.05, target_fooling_rate=0.5, max_epochs=10, bounds=BOUNDS
    ).fit(model, x, y)
    assert result.epochs == 1 and result.fooling_rate >= 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_perturbation_stays_in_the_ball_and_the_fooling_rates_are_what_the_model_says(norm):
    model = tiny_classifier(3, SHAPE, classes=4)
    x = random_inputs(3, 40, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    held_out = random_inputs(4, 30, SHAPE, (0.0, 1.0))
    eps = 0.4
    result = UniversalPerturbation(norm=norm, eps=eps, max_epochs=3, batch_size=8).fit(model, x, y)
    assert isinstance(result, UniversalResult) and result.perturbation.shape == SHAPE
    assert float(reference_norm(result.perturbation[None], norm)[0]) <= eps * (1 + 1e-9)
    assert result.gradient_evals > 0 and result.forward_evals > 0

    def independent(points):
        with torch.no_grad():
            moved = model((points + result.perturbation).clamp(0.0, 1.0)).argmax(1)
            return moved != model(points).argmax(1)

    assert torch.equal(result.fooled, independent(x))
    assert result.fooling_rate == pytest.approx(float(independent(x).double().mean()))
    expected = float(independent(held_out).double().mean())
    assert result.fooling_rate > 0.0 and expected > 0.0
    assert result.fooling_rate_on(model, held_out) == pytest.approx(expected)
    assert fooling_rate(model, held_out, result.perturbation) == pytest.approx(expected)


def test_the_fit_is_reproducible_with_its_seed_and_moves_away_from_the_predictions():
    model = tiny_classifier(5, SHAPE, classes=4)
    x = random_inputs(5, 16, SHAPE, (0.0, 1.0))
    predicted = model(x).argmax(1)
    attack = UniversalPerturbation(norm="l2", eps=0.5, max_epochs=2, batch_size=4, seed=3)
    first = attack.fit(model, x, predicted)
    assert torch.equal(attack.fit(model, x, predicted).perturbation, first.perturbation)
    # the labels are validated but the fit moves away from the predictions, not from y
    other_labels = attack.fit(model, x, (predicted + 1) % 4)
    assert torch.equal(other_labels.perturbation, first.perturbation)


def test_fit_guards_the_model_state_like_a_call():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Dropout(0.1), nn.Linear(8, 3))
    model.double().train()
    model[3].eval()
    model[1].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    x = random_inputs(6, 12, SHAPE, (0.0, 1.0))
    y = torch.zeros(12, dtype=torch.int64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.warns(VulnscopeWarning, match="training mode"):
        UniversalPerturbation(eps=0.3, max_epochs=1).fit(model, x, y)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads


def test_fit_validates_its_inputs_like_a_call():
    model = tiny_classifier(0, SHAPE)
    x = random_inputs(0, 4, SHAPE, (0.0, 1.0))
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(InvalidArgumentError, match="eps is not set"):
        UniversalPerturbation().fit(model, x, y)
    with pytest.raises(InvalidArgumentError, match="x must lie inside bounds"):
        UniversalPerturbation(eps=0.1).fit(model, x + 2, y)
    with pytest.raises(InvalidArgumentError, match="target is required"):
        UniversalPerturbation(eps=0.1, targeted=True).fit(model, x, y)
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(4,\)"):
        UniversalPerturbation(eps=0.1).fit(model, x, y[:2])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"norm": "l1"}, InvalidArgumentError, r"norm must be one of \['linf', 'l2'\]"),
        ({"eps": -0.1}, InvalidArgumentError, "eps must be >= 0"),
        ({"target_fooling_rate": 0.0}, InvalidArgumentError, r"target_fooling_rate must be > 0"),
        ({"target_fooling_rate": 1.5}, InvalidArgumentError, r"target_fooling_rate must be in"),
        ({"max_epochs": 0}, InvalidArgumentError, "max_epochs must be an integer >= 1"),
        ({"batch_size": 2.0}, InvalidTypeError, "batch_size must be an integer"),
        ({"attack": "deepfool"}, InvalidTypeError, "attack must be a vulnscope Attack"),
        (
            {"attack": DeepFool(bounds=(-1.0, 1.0))},
            InvalidArgumentError,
            "attack must have the same bounds",
        ),
        (
            {"attack": DeepFool(targeted=True)},
            InvalidArgumentError,
            "attack must have targeted=False",
        ),
        (
            {"attack": PGD()},
            InvalidArgumentError,
            "attack must be a minimal attack or have its eps",
        ),
        (
            {"attack": UniversalPerturbation(eps=0.1)},
            InvalidArgumentError,
            "not be universal",
        ),
        ({"seed": -1}, InvalidArgumentError, "seed must be an integer >= 0"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        UniversalPerturbation(**{"eps": 0.1, **kwargs})


def test_the_default_inner_attack_is_l2_deepfool_as_in_the_paper():
    attack = UniversalPerturbation(norm="linf", eps=0.1, targeted=True, bounds=(-1.0, 1.0))
    inner = attack.inner_attack()
    assert isinstance(inner, DeepFool) and inner.norm == "l2" and inner.targeted
    assert inner.bounds == (-1.0, 1.0)
    assert attack.replace(targeted=False).inner_attack().targeted is False
    budgeted = PGD(eps=0.05, steps=3)
    assert UniversalPerturbation(eps=0.1, attack=budgeted).inner_attack() is budgeted


def test_fooling_rate_refuses_bad_arguments():
    model = tiny_classifier(0, SHAPE)
    x = random_inputs(0, 4, SHAPE, (0.0, 1.0))
    with pytest.raises(InvalidArgumentError, match=r"perturbation must be a tensor of shape"):
        fooling_rate(model, x, torch.zeros(6))
    result = UniversalPerturbation(eps=0.1, targeted=True, max_epochs=1).fit(
        model, x, torch.zeros(4, dtype=torch.int64), target=torch.ones(4, dtype=torch.int64)
    )
    with pytest.raises(InvalidArgumentError, match="target is required"):
        result.fooling_rate_on(model, x)
    assert 0.0 <= result.fooling_rate_on(model, x, target=torch.ones(4, dtype=torch.int64)) <= 1
