from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import BIM, FGSM, PGD
from vulnscope.errors import VulnscopeWarning

SHAPE = (1, 3, 3)


def _reference_pgd(model, x, y, eps, step_size, steps):
    """A plain Linf PGD loop, written independently of vulnscope (torchattacks-style)."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0, 1)
    return x_adv


@pytest.mark.parametrize("seed", range(5))
def test_classic_pgd_equals_an_independent_reference_loop(seed):
    model = tiny_classifier(seed, SHAPE, classes=5, hidden=16)
    x = random_inputs(seed, 20, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    ours = PGD(eps=0.1, steps=15, step_size=0.02, random_start=False)(model, x, y)
    torch.testing.assert_close(
        ours.x_adv, _reference_pgd(model, x, y, 0.1, 0.02, 15), atol=1e-12, rtol=0
    )


def test_classic_pgd_costs_at_most_one_gradient_per_step_and_sample():
    model = tiny_classifier(0, SHAPE)
    x = random_inputs(0, 7, SHAPE, (0.0, 1.0))
    result = PGD(eps=0.1, steps=12)(model, x, model(x).argmax(1))
    assert result.forward_evals == result.gradient_evals <= 7 * 12


def _reference_pgd_box(model, x, y, eps, step_size, steps):
    """The same loop projecting with min/max against the ball-and-box bounds.

    In float32, clamp(x + clamp(x_adv - x)) and min(max(x_adv, x - eps), x + eps) round
    differently; this form matches vulnscope's arithmetic, so results can be compared bit
    for bit.
    """
    low, high = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + step_size * grad.sign(), low), high)
    return x_adv


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_cycle_detection_is_exact_and_saves_work_on_the_digits_cnn(digits_cnn, digits_test, eps):
    """Sign steps settle into cycles; stopping there must not change a single bit."""
    x, y = digits_test.x[:120], digits_test.y[:120]
    ours = PGD(eps=eps, steps=40, step_size=0.01, random_start=False)(digits_cnn, x, y)
    reference = _reference_pgd_box(digits_cnn, x, y, eps, 0.01, 40)
    assert torch.equal(ours.x_adv, reference)
    assert ours.gradient_evals < 0.9 * 40 * 120


def test_early_stop_with_cycles_finds_exactly_the_samples_some_iterate_breaks(
    digits_cnn, digits_test
):
    x, y = digits_test.x[:120], digits_test.y[:120]
    early = PGD(eps=0.1, steps=40, step_size=0.01, random_start=False, early_stop=True)(
        digits_cnn, x, y
    )
    x_adv, ever = x.clone(), digits_cnn(x).argmax(1) != y
    for _ in range(40):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(digits_cnn(x_adv), y), x_adv)
        low, high = (x - 0.1).clamp(min=0), (x + 0.1).clamp(max=1)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + 0.01 * grad.sign(), low), high)
        ever |= digits_cnn(x_adv).argmax(1) != y
    assert torch.equal(early.success, ever)


def test_no_cycle_shortcut_for_a_stochastic_model():
    model = torch.nn.Sequential(tiny_classifier(0, SHAPE), torch.nn.Dropout(0.1)).train()
    x = random_inputs(0, 7, SHAPE, (0.0, 1.0))
    with pytest.warns(VulnscopeWarning, match="training mode"):
        result = PGD(eps=0.01, steps=12, random_start=False)(
            model, x, torch.zeros(7, dtype=torch.long)
        )
    assert result.gradient_evals == 7 * 12


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_early_stop_finds_every_example_classic_pgd_finds_for_less_work(norm):
    model = tiny_classifier(1, SHAPE, classes=5, hidden=16)
    x = random_inputs(1, 60, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    eps = {"linf": 0.15, "l2": 0.4, "l1": 1.0}[norm]
    classic = PGD(norm=norm, eps=eps, steps=20, random_start=False)(model, x, y)
    early = PGD(norm=norm, eps=eps, steps=20, random_start=False, early_stop=True)(model, x, y)
    assert (early.success | ~classic.success).all()
    assert 0 < classic.success.sum() < 60
    assert early.gradient_evals < classic.gradient_evals


def test_early_stop_keeps_the_first_adversarial_iterate():
    model = tiny_classifier(2, SHAPE, classes=5, hidden=16)
    x = random_inputs(2, 30, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    early = PGD(eps=0.2, steps=20, step_size=0.02, random_start=False, early_stop=True)(model, x, y)
    for i in early.success.nonzero()[:, 0]:
        # replaying the classic iteration for this sample reaches early.x_adv[i] at some step
        # at which the model errs for the first time
        iterates = [
            _reference_pgd(model, x[i : i + 1], y[i : i + 1], 0.2, 0.02, k) for k in range(21)
        ]
        wrong = [bool(model(it).argmax(1) != y[i]) for it in iterates]
        first = wrong.index(True)
        torch.testing.assert_close(early.x_adv[i : i + 1], iterates[first], atol=1e-12, rtol=0)


def test_restarts_only_add_successes():
    model = tiny_classifier(3, SHAPE, classes=5, hidden=16)
    x = random_inputs(3, 80, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    single = PGD(eps=0.1, steps=5, seed=4)(model, x, y)
    several = PGD(eps=0.1, steps=5, restarts=4, seed=4)(model, x, y)
    assert (several.success | ~single.success).all()
    assert several.success.sum() >= single.success.sum()


def test_targeted_pgd_reaches_the_target(digits_cnn, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    target = (y + 3) % 10
    result = PGD(eps=0.3, steps=40, targeted=True)(digits_cnn, x, y, target=target)
    with torch.no_grad():
        assert torch.equal(result.success, digits_cnn(result.x_adv).argmax(1) == target)
    assert result.success.float().mean() > 0.9


def test_different_seeds_give_different_random_starts():
    model = tiny_classifier(5, SHAPE)
    x = random_inputs(5, 4, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    first = PGD(eps=0.3, steps=1, step_size=1e-6, seed=0)(model, x, y)
    second = PGD(eps=0.3, steps=1, step_size=1e-6, seed=1)(model, x, y)
    assert not torch.equal(first.x_adv, second.x_adv)


def test_bim_defaults_follow_kurakin_et_al():
    budget = BIM().budget_at(16 / 255)
    assert budget.step_size == pytest.approx(1 / 255)
    assert budget.steps == 20  # min(16 + 4, 1.25 * 16)
    assert BIM().budget_at(4 / 255).steps == 5  # min(4 + 4, 1.25 * 4)


def test_replace_changes_only_what_it_names():
    attack = PGD(norm="l2", eps=0.5, steps=7, seed=3)
    changed = attack.replace(eps=1.0)
    assert changed.eps == 1.0 and changed.steps == 7 and changed.norm == "l2" and changed.seed == 3
    assert attack.eps == 0.5
    assert repr(changed).startswith("PGD(norm='l2', eps=1.0, steps=7")


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize(
    "build",
    [
        lambda norm: PGD(norm=norm, eps=0.3, steps=7, seed=3),
        lambda norm: PGD(norm=norm, eps=0.3, steps=7, early_stop=True, seed=3),
        lambda norm: FGSM(norm=norm, eps=0.3),
        lambda norm: BIM(norm=norm, eps=0.3, steps=5),
    ],
)
def test_perturb_returns_what_the_attack_returns(norm, build):
    from vulnscope.models import preserved_model_state

    model = tiny_classifier(5, (1, 2, 3), classes=4)
    x = random_inputs(5, 6, (1, 2, 3), (0.0, 1.0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    attack = build(norm)
    with preserved_model_state(model):
        lean = attack.perturb(model, x, y)
    assert torch.equal(lean, attack(model, x, y).x_adv)
