"""FisherAttack against an independent input Fisher (autograd Jacobians and a dense
eigendecomposition) and, for a linear two-class model, the closed-form distance to the
decision hyperplane."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import FisherAttack
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate import robust_accuracy

SHAPE = (1, 2, 3)
WIDE = (-10.0, 10.0)


def _top_fisher_direction(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """v1 of F = Jᵀ (diag p - p pᵀ) J from dense autograd Jacobians, one sample at a time,
    signed so that it raises -log p of the predicted class (the sign the attack tries first)."""
    vectors = []
    for sample in x:
        point = sample[None]
        jacobian = torch.autograd.functional.jacobian(model, point).reshape(-1, point.numel())
        with torch.no_grad():
            p = torch.softmax(model(point)[0], 0)
        fisher = jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian
        values, basis = torch.linalg.eigh(fisher)
        assert values[-1] - values[-2] > 1e-8 * values[-1]  # v1 is well defined
        # d(-log p_k)/dx = Jᵀ (p - e_k) for the predicted class k
        uphill = jacobian.T @ (p - F.one_hot(p.argmax(), p.numel()).double())
        vectors.append(basis[:, -1] * torch.sign(basis[:, -1] @ uphill))
    return torch.stack(vectors).reshape(x.shape)


def _best_of_both_signs(model, x, y, step, eps, bounds):
    """The attack's rule: an adversarial candidate if any (+ first), else the larger CE."""
    plus = (x + eps * step).clamp(*bounds)
    minus = (x - eps * step).clamp(*bounds)
    with torch.no_grad():
        logits_plus, logits_minus = model(plus), model(minus)
    wrong_plus, wrong_minus = logits_plus.argmax(1) != y, logits_minus.argmax(1) != y
    loss_plus = F.cross_entropy(logits_plus, y, reduction="none")
    loss_minus = F.cross_entropy(logits_minus, y, reduction="none")
    take_minus = ~wrong_plus & (wrong_minus | (loss_minus > loss_plus))
    view = (-1, *([1] * (x.ndim - 1)))
    return torch.where(take_minus.reshape(view), minus, plus), wrong_plus | wrong_minus


def _problem(seed=0, n=8, classes=4):
    model = tiny_classifier(seed, SHAPE, classes=classes)
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _two_class_linear(seed=0, n=6, dim=5):
    """Logits W x + b with 2 classes: v1 ∥ w1 - w0, the distance to the boundary is closed-form."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, dim, generator=generator, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=generator, dtype=torch.float64))
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    normal = (model.weight[1] - model.weight[0]).detach()
    offset = float((model.bias[1] - model.bias[0]).detach())
    distance = (x @ normal + offset).abs() / normal.norm()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model.eval(), x, y, normal, distance


@pytest.mark.parametrize("bounds", [WIDE, (0.0, 1.0)])
def test_l2_step_is_eps_along_the_better_sign_of_v1(bounds):
    model, x, y = _problem(seed=1)
    eps = 0.4
    v1 = _top_fisher_direction(model, x)
    expected, _ = _best_of_both_signs(model, x, y, v1, eps, bounds)
    result = FisherAttack(eps=eps, bounds=bounds)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected, rtol=1e-9, atol=1e-9)
    if bounds == WIDE:
        torch.testing.assert_close(result.norms, torch.full((8,), eps, dtype=torch.float64))


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_step_prefers_the_adversarial_sign_then_the_larger_loss(seed):
    # seed 3 has samples where both signs are adversarial (then +v1, uphill, is kept)
    model, x, y = _problem(seed=seed, n=16)
    v1 = _top_fisher_direction(model, x)
    eps = 0.5
    result = FisherAttack(eps=eps, bounds=WIDE)(model, x, y)
    expected, any_wrong = _best_of_both_signs(model, x, y, v1, eps, WIDE)
    torch.testing.assert_close(result.x_adv, expected, rtol=1e-9, atol=1e-9)
    assert torch.equal(result.success, any_wrong)
    assert result.success.any() and not result.success.all()  # both branches exercised


def test_linf_step_is_eps_times_the_sign_of_v1():
    model, x, y = _problem(seed=3)
    eps = 0.1
    v1 = _top_fisher_direction(model, x)
    expected, _ = _best_of_both_signs(model, x, y, v1.sign(), eps, (0.0, 1.0))
    result = FisherAttack(norm="linf", eps=eps)(model, x, y)
    torch.testing.assert_close(result.x_adv, expected, rtol=1e-9, atol=1e-9)
    assert (result.norms <= eps * (1 + 1e-12)).all()


def test_targeted_step_moves_towards_the_target():
    model, x, y = _problem(seed=4)
    target = (y + 1) % 4
    eps = 0.5
    v1 = _top_fisher_direction(model, x)
    result = FisherAttack(eps=eps, targeted=True, bounds=WIDE)(model, x, y, target=target)
    plus, minus = x + eps * v1, x - eps * v1
    with torch.no_grad():
        hit_plus = model(plus).argmax(1) == target
        hit_minus = model(minus).argmax(1) == target
        loss_plus = F.cross_entropy(model(plus), target, reduction="none")
        loss_minus = F.cross_entropy(model(minus), target, reduction="none")
    take_minus = ~hit_plus & (hit_minus | (loss_minus < loss_plus))
    expected = torch.where(take_minus[:, None, None, None], minus, plus)
    torch.testing.assert_close(result.x_adv, expected, rtol=1e-9, atol=1e-9)


def test_minimal_reaches_the_hyperplane_along_v1():
    model, x, y, normal, distance = _two_class_linear()
    eps = 1.5 * float(distance.max())
    attack = FisherAttack(eps=eps, minimal=True, bounds=WIDE, search_steps=24, refine=10)
    result = attack(model, x, y)
    resolution = eps / 24 / 2**10
    assert result.success.all()
    assert (result.norms >= distance * (1 - 1e-9)).all()
    assert (result.norms <= distance + resolution * (1 + 1e-9)).all()
    # the step is along ±(w1 - w0): v1 of a two-class model
    delta = result.x_adv - x
    cosine = (delta @ normal).abs() / (delta.norm(dim=1) * normal.norm())
    torch.testing.assert_close(cosine, torch.ones(6, dtype=torch.float64))


def test_minimal_without_eps_searches_the_whole_box():
    model, x, y, _, distance = _two_class_linear(seed=1)
    result = FisherAttack(minimal=True, bounds=WIDE)(model, x, y)
    reach = 20.0 * 5**0.5
    assert result.success.all()
    assert (result.norms >= distance * (1 - 1e-9)).all()
    assert (result.norms <= distance + reach / 24 / 2**10 * (1 + 1e-9)).all()


def test_minimal_with_too_small_eps_returns_x_unchanged():
    model, x, y, _, distance = _two_class_linear(seed=2)
    result = FisherAttack(eps=0.5 * float(distance.min()), minimal=True, bounds=WIDE)(model, x, y)
    assert torch.equal(result.x_adv, x)
    assert not result.success.any()
    assert (result.norms == 0).all()


def test_minimal_leaves_misclassified_samples_unchanged():
    model, x, y, _, distance = _two_class_linear(seed=3)
    wrong = torch.tensor([True, False, True, False, False, False])
    labels = torch.where(wrong, 1 - y, y)
    eps = 1.5 * float(distance.max())
    result = FisherAttack(eps=eps, minimal=True, bounds=WIDE)(model, x, labels)
    assert torch.equal(result.x_adv[wrong], x[wrong])
    assert (result.norms[~wrong] > 0).all()
    assert result.success.all()


def test_targeted_minimal_is_rejected():
    with pytest.raises(InvalidArgumentError, match="minimal"):
        FisherAttack(minimal=True, targeted=True)


def test_missing_eps_is_reported_at_call():
    model, x, y = _problem()
    attack = FisherAttack()  # constructing without eps is allowed
    with pytest.raises(InvalidArgumentError, match="eps"):
        attack(model, x, y)


def test_l1_is_rejected():
    with pytest.raises(InvalidArgumentError, match=r"norm must be one of \['l2', 'linf'\]"):
        FisherAttack(norm="l1", eps=0.1)


def test_sweep_matches_one_call_per_budget():
    model = tiny_classifier(5, SHAPE, classes=4)
    x = random_inputs(5, 24, SHAPE, (0.0, 1.0))
    generator = torch.Generator().manual_seed(6)
    y = torch.where(
        torch.rand(24, generator=generator) < 0.8,
        model(x).argmax(1).detach(),
        torch.randint(0, 4, (24,), generator=generator),
    )
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.any() and (~correct).any()
    epsilons = [0.05, 0.2, 0.5, 1.0, 2.0]
    attack = FisherAttack(eps=0.1)

    sweep = attack.sweep(model, x, y, epsilons=epsilons)
    per_budget = torch.stack([attack.replace(eps=e)(model, x, y).success for e in epsilons])
    # a sweep counts a sample broken once any smaller budget broke it, and clean mistakes always
    expected = per_budget.cummax(0).values | ~correct
    assert torch.equal(sweep.success, expected)
    assert torch.equal(sweep.clean_correct, correct)
    assert expected[0].sum() < expected[-1].sum()  # the budgets matter
    # the fast path: one v1 (C vector-Jacobian products) per sample still robust
    assert sweep.gradient_evals == 4 * int(correct.sum())

    curve = robust_accuracy(model, x, y, attack=attack, epsilons=[0.0, *epsilons])
    assert torch.equal(curve.success[1:], expected)
    assert torch.equal(curve.success[0], ~correct)


class _Periodic(nn.Module):
    """Two classes, class 1 where cos(uᵀx) > 1/2: bands across u, so a larger step along
    v1 ∥ u can leave the class that a smaller one reached."""

    def __init__(self, u: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("u", u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.u
        return torch.stack([torch.zeros_like(z), 4.0 * (torch.cos(z) - 0.5)], 1)


def test_sweep_keeps_a_sample_broken_at_a_smaller_budget():
    generator = torch.Generator().manual_seed(8)
    u = torch.randn(6, generator=generator, dtype=torch.float64)
    u = u / u.norm()
    z = torch.linspace(2.0, 4.2, 12, dtype=torch.float64)  # all in class 0, cos(z) < 1/2
    x = (z[:, None] * u).reshape(12, *SHAPE)
    model = _Periodic(u).eval()
    y = torch.zeros(12, dtype=torch.int64)
    epsilons = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    attack = FisherAttack(eps=0.1, bounds=WIDE)

    per_budget = torch.stack([attack.replace(eps=e)(model, x, y).success for e in epsilons])
    expected = per_budget.cummax(0).values
    assert not torch.equal(per_budget, expected)  # some samples are broken, then not
    sweep = attack.sweep(model, x, y, epsilons=epsilons)
    assert torch.equal(sweep.success, expected)


def test_minimal_attack_sweeps_from_one_uncapped_run():
    model, x, y = _problem()
    attack = FisherAttack(minimal=True)
    found = attack(model, x, y)
    correct = model(x).argmax(1) == y
    epsilons = sorted({0.05, 0.2, *(float(v) for v in found.norms[found.success & correct])})
    curve = robust_accuracy(model, x, y, attack=attack, epsilons=epsilons)
    for row, eps in zip(curve.success, epsilons, strict=True):
        expected = ~correct | (correct & found.success & (found.norms <= eps))
        assert torch.equal(row, expected), eps
    assert (curve.accuracy[1:] <= curve.accuracy[:-1]).all()


@pytest.mark.parametrize("minimal", [False, True])
def test_counts_one_gradient_per_class_per_sample(minimal):
    model, x, y = _problem(seed=7, n=5, classes=4)
    result = FisherAttack(eps=0.3, minimal=minimal)(model, x, y)
    assert result.gradient_evals == 4 * 5
    assert result.forward_evals >= 5
