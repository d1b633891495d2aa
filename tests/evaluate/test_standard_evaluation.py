"""The standard evaluation cascade: soundness, completeness on provable cases, bookkeeping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_inputs, reference_norm, tiny_classifier
from vulnscope.attacks import APGD, PGD, Attack, Square
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate import (
    CASCADE_ATTACKS,
    standard_evaluation,
    standard_evaluation_curve,
)

FAST = ["apgd-ce", "apgd-t"]
QUICK_SQUARE = Square(queries=300, seed=0)


def _linear_four_class(dim=6, n=8, seed=0):
    """Logits W x + b on [0, 1]^dim: the exact L∞ distance of x to class k's region is a
    linear program; here we only need the one-vs-rest bound: the class cannot change while
    every margin z_y - z_k exceeds eps · |w_y - w_k|_1."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, dim, generator=generator, dtype=torch.float64))
        model.bias.zero_()
    x = torch.rand(n, dim, generator=generator, dtype=torch.float64)
    y = model(x).argmax(1)
    return model.eval(), x, y


def _certified_radius(model, x, y):
    """Largest L∞ eps at which no point of the ball can change the class (dual norm bound)."""
    w, b = model.weight.detach(), model.bias.detach()
    logits = x @ w.T + b
    radius = torch.full((x.shape[0],), float("inf"), dtype=x.dtype)
    for k in range(w.shape[0]):
        other = k != y
        margin = logits.gather(1, y[:, None])[:, 0] - logits[:, k]
        size = (w[y] - w[k]).abs().sum(1)
        radius = torch.where(other, torch.minimum(radius, margin / size), radius)
    return radius


def test_no_point_is_broken_below_its_certified_radius():
    model, x, y = _linear_four_class()
    radius = _certified_radius(model, x, y)
    eps = 0.9 * float(radius.min())
    report = standard_evaluation(model, x, y, eps=eps, attacks=["apgd-ce", "apgd-t", QUICK_SQUARE])
    assert report.robust_accuracy == 1.0
    assert report.broken_by == (None,) * x.shape[0]
    assert torch.equal(report.x_adv, x)


def test_a_binary_affine_model_is_broken_exactly_above_its_minimal_perturbation():
    # logits (0, w.x + c): the class flips at L∞ distance margin / |w|_1 (box wide enough).
    dim = 5
    w = torch.tensor([0.5, -1.0, 0.25, 2.0, -0.75], dtype=torch.float64)
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(dim, dtype=torch.float64), w]))
        model.bias.zero_()
    x = torch.full((3, dim), 0.5, dtype=torch.float64)
    margin = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    x = x - ((x @ w + margin) / (w @ w))[:, None] * w
    y = torch.zeros(3, dtype=torch.int64)
    minimal = margin / w.abs().sum()
    eps = float(minimal[1]) * 1.01  # above the first two minimal perturbations, below the third
    report = standard_evaluation(model, x, y, eps=eps, bounds=(-10.0, 10.0))
    assert report.robust.tolist() == [False, False, True]
    assert report.broken_by[2] is None and report.broken_by[0] is not None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_reported_adversarial_is_inside_the_ball_and_misclassified(norm):
    model = tiny_classifier(3, (1, 3, 3), classes=5)
    x = random_inputs(3, 12, (1, 3, 3), (0.0, 1.0))
    y = torch.randint(0, 5, (12,), generator=torch.Generator().manual_seed(3))
    eps = 0.15 if norm == "linf" else 0.5
    report = standard_evaluation(model, x, y, norm=norm, eps=eps, attacks=FAST, seed=1)
    assert ((report.x_adv >= 0) & (report.x_adv <= 1)).all()
    assert (reference_norm(report.x_adv - x, norm) <= eps * (1 + 1e-9)).all()
    with torch.no_grad():
        predicted = model(report.x_adv).argmax(1)
        clean = model(x).argmax(1)
    for i, name in enumerate(report.broken_by):
        if name is None:
            assert predicted[i] == y[i] and bool(report.robust[i])
        elif name == "clean":
            assert clean[i] != y[i] and torch.equal(report.x_adv[i], x[i])
        else:
            assert predicted[i] != y[i] and not bool(report.robust[i])
    assert report.robust_accuracy == pytest.approx(float(report.robust.double().mean()))
    assert report.clean_accuracy == pytest.approx(float((clean == y).double().mean()))


def test_each_attack_runs_only_on_the_points_still_robust():
    model = tiny_classifier(4, (1, 3, 3), classes=4)
    x = random_inputs(4, 16, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    report = standard_evaluation(model, x, y, eps=0.1, attacks=FAST, n_target_classes=3)
    first, second = report.stages
    assert first.name == "APGD-CE" and first.attacked == 16
    remaining = 16 - first.broken
    # APGD-T runs once per target class, each time on the points still robust.
    assert remaining <= second.attacked <= 3 * remaining
    assert sum(name == "APGD-T" for name in report.broken_by) == second.broken


def test_same_seed_same_result():
    model = tiny_classifier(5, (1, 3, 3), classes=4)
    x = random_inputs(5, 10, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    a = standard_evaluation(model, x, y, eps=0.2, seed=3, attacks=["apgd-ce", QUICK_SQUARE])
    b = standard_evaluation(model, x, y, eps=0.2, seed=3, attacks=["apgd-ce", QUICK_SQUARE])
    assert torch.equal(a.x_adv, b.x_adv) and a.broken_by == b.broken_by


def test_configured_attacks_run_with_the_budget_and_targets():
    model = tiny_classifier(10, (1, 3, 3), classes=4)
    x = random_inputs(10, 10, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    report = standard_evaluation(
        model,
        x,
        y,
        eps=0.1,
        attacks=[APGD(steps=20, loss="margin", targeted=True), QUICK_SQUARE],
        n_target_classes=3,
    )
    assert [stage.name for stage in report.stages] == ["APGD-T", "Square"]
    assert report.stages[0].attacked >= 10 - sum(name == "clean" for name in report.broken_by)
    assert (reference_norm(report.x_adv - x, "linf") <= 0.1 + 1e-12).all()


def test_the_curve_keeps_what_smaller_budgets_broke():
    model = tiny_classifier(6, (1, 3, 3), classes=4)
    x = random_inputs(6, 20, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    curve = standard_evaluation_curve(model, x, y, epsilons=[0.2, 0.05, 0.1], attacks=FAST)
    assert curve.epsilons.tolist() == [0.05, 0.1, 0.2]
    assert (curve.accuracy[1:] <= curve.accuracy[:-1]).all()
    for small, large in zip(curve.evaluations, curve.evaluations[1:], strict=False):
        kept = ~small.robust
        assert torch.equal(large.x_adv[kept], small.x_adv[kept])
        assert [large.broken_by[i] for i in kept.nonzero()[:, 0].tolist()] == [
            small.broken_by[i] for i in kept.nonzero()[:, 0].tolist()
        ]
    assert curve.to_dict()["robust_accuracy"] == curve.accuracy.tolist()


class _Quantised(nn.Module):
    """A linear model on inputs rounded to a grid: zero input gradients almost everywhere,
    yet a point one grid step away is misclassified (gradient masking by construction)."""

    def __init__(self):
        super().__init__()
        self.linear = tiny_classifier(7, (1, 3, 3), classes=4)

    def forward(self, x):
        return self.linear(torch.round(x * 4) / 4)


def test_masked_gradients_are_reported_and_the_black_box_attack_goes_on():
    model = _Quantised().eval()
    x = random_inputs(7, 16, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    report = standard_evaluation(model, x, y, eps=0.3, attacks=["apgd-ce", QUICK_SQUARE], seed=0)
    names = {check.name for check in report.checks if check.triggered}
    assert "gradients" in names
    assert "black_box_beats_white_box" in names
    assert any("all-zero gradient" in warning for warning in report.warnings)
    # APGD-CE sees zero gradients (only its random start can land across a step); Square
    # goes on to break the points it missed.
    assert report.stages[1].broken > 0


def test_probability_outputs_and_randomised_outputs_are_reported():
    inner = tiny_classifier(8, (1, 3, 3), classes=4)
    softmax = nn.Sequential(inner, nn.Softmax(dim=1)).eval()
    x = random_inputs(8, 6, (1, 3, 3), (0.0, 1.0))
    y = softmax(x).argmax(1)
    report = standard_evaluation(softmax, x, y, eps=0.05, attacks=["apgd-ce"])
    assert any("look like probabilities" in w for w in report.warnings)

    class Noisy(nn.Module):
        def forward(self, x):
            return inner(x) + 1e-3 * torch.randn(x.shape[0], 4, dtype=x.dtype)

    report = standard_evaluation(Noisy(), x, y, eps=0.05, attacks=["apgd-ce"])
    assert any("randomised" in w for w in report.warnings)
    clean = standard_evaluation(inner, x, y, eps=0.05, attacks=["apgd-ce"])
    assert clean.warnings == ()


def test_every_cascade_attack_runs():
    model = tiny_classifier(9, (1, 3, 3), classes=4)
    x = random_inputs(9, 4, (1, 3, 3), (0.0, 1.0))
    y = model(x).argmax(1)
    for name, spec in CASCADE_ATTACKS.items():
        # Square's 5000 queries on the points no attack can break take seconds: L∞ only.
        for norm in spec.norms if name != "square" else ("linf",):
            report = standard_evaluation(
                model, x, y, norm=norm, eps=0.3, attacks=[name], n_target_classes=2
            )
            assert report.stages[0].name == spec.name, name


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attacks": ["apgd-ce", "nope"]}, InvalidArgumentError, "unknown attack 'nope'"),
        ({"attacks": []}, InvalidArgumentError, "at least one attack"),
        ({"attacks": "apgd-ce"}, InvalidTypeError, "sequence of names"),
        ({"attacks": ["square", "square"]}, InvalidArgumentError, "listed twice"),
        ({"attacks": [PGD(norm="l2")]}, InvalidArgumentError, "works in norm 'l2'"),
        ({"attacks": [3]}, InvalidArgumentError, "unknown attack 3"),
        ({"eps": 0.0}, InvalidArgumentError, "eps must be > 0"),
        ({"eps": -1.0}, InvalidArgumentError, "eps must be > 0"),
        ({"norm": "l1"}, InvalidArgumentError, "norm must be one of"),
        ({"n_target_classes": 0}, InvalidArgumentError, "n_target_classes must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    model = tiny_classifier(0, (1, 3, 3))
    x = random_inputs(0, 2, (1, 3, 3), (0.0, 1.0))
    arguments = {"eps": 0.1, **kwargs}
    with pytest.raises(error, match=message):
        standard_evaluation(model, x, torch.tensor([0, 1]), **arguments)


def test_nothing_left_to_attack_is_not_an_error():
    model = tiny_classifier(11, (1, 3, 3), classes=4)
    x = random_inputs(11, 5, (1, 3, 3), (0.0, 1.0))
    y = (model(x).argmax(1) + 1) % 4  # every point misclassified before any attack
    report = standard_evaluation(model, x, y, eps=0.1, attacks=FAST, batch_size=2)
    assert report.broken_by == ("clean",) * 5 and report.robust_accuracy == 0.0
    assert all(stage.attacked == 0 for stage in report.stages)


class _Sideways(Attack):
    """A targeted attack that ignores its target: it always steps along +x_0."""

    supported_norms = ("linf",)

    def run(self, model, x, y, *, target, generator):
        step = torch.zeros_like(x)
        step[:, 0] = self.budget()
        return (x + step).clamp(*self.bounds)


def test_a_targeted_stage_breaks_a_point_it_sends_to_another_class_than_its_target():
    # Logits (0, -0.5, 20 (x_0 - 0.55)) at x_0 = 0.5: the runner-up, and the only target,
    # is class 1, which no input reaches; a step of 0.1 along x_0 lands in class 2.
    class Model(nn.Module):
        def forward(self, x):
            zero = torch.zeros_like(x[:, 0])
            return torch.stack([zero, zero - 0.5, 20.0 * (x[:, 0] - 0.55)], dim=1)

    x = torch.full((3, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.int64)
    report = standard_evaluation(
        Model(),
        x,
        y,
        eps=0.1,
        attacks=[_Sideways(norm="linf", eps=None, targeted=True, bounds=(0.0, 1.0), seed=0)],
        n_target_classes=1,
    )
    assert report.broken_by == ("_Sideways-T",) * 3  # as AutoAttack scores it
    assert report.robust_accuracy == 0.0
    assert (Model()(report.x_adv).argmax(1) == 2).all()
