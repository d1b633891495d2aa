"""Adversarial training (Madry et al.; fast FGSM) and TRADES, on tiny models and the digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from helpers import random_inputs, reference_norm, tiny_classifier
from vulnscope.attacks import PGD
from vulnscope.defences import TRADES, AdversarialTraining, fast_fgsm_training, pgd_training
from vulnscope.defences.trades import trades_loss
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import train_classifier

SHAPE = (1, 2, 3)


def _batch(seed: int = 0, n: int = 6) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = tiny_classifier(seed, SHAPE, classes=3).train()
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    return model, x, torch.arange(n) % 3


def test_adversarial_examples_are_the_pgd_attack_seeded_from_the_generator() -> None:
    model, x, y = _batch()
    objective = AdversarialTraining(eps=0.2, steps=5)
    x_adv = objective.adversarial_examples(model, x, y, torch.Generator().manual_seed(4))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(4)))
    expected = PGD(eps=0.2, steps=5, seed=seed)(model.eval(), x, y).x_adv
    assert torch.equal(x_adv, expected)
    assert (reference_norm(x_adv - x, "linf") <= 0.2 + 1e-12).all()


def test_objective_is_the_adversarial_loss_and_keeps_the_training_mode() -> None:
    model, x, y = _batch(1)
    objective = pgd_training(0.3, steps=4)
    loss = objective(model, x, y, torch.Generator().manual_seed(0))
    assert model.training and all(m.training for m in model.modules())
    x_adv = objective.adversarial_examples(model, x, y, torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, F.cross_entropy(model(x_adv), y))
    assert float(loss.detach()) > float(F.cross_entropy(model(x), y).detach())  # it climbed


def test_clean_weight_mixes_the_clean_and_adversarial_losses() -> None:
    model, x, y = _batch(2)
    generator_state = torch.Generator().manual_seed(3)
    x_adv = AdversarialTraining(eps=0.2, steps=3).adversarial_examples(model, x, y, generator_state)
    mixed = AdversarialTraining(eps=0.2, steps=3, clean_weight=0.25)
    loss = mixed(model, x, y, torch.Generator().manual_seed(3))
    expected = 0.75 * F.cross_entropy(model(x_adv), y) + 0.25 * F.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, expected)


def test_fast_fgsm_is_one_step_of_one_and_a_quarter_eps_from_a_random_start() -> None:
    objective = fast_fgsm_training(0.08)
    assert (objective.steps, objective.step_size) == (1, pytest.approx(0.1))
    model, x, y = _batch(3)
    x_adv = objective.adversarial_examples(model, x, y, torch.Generator().manual_seed(0))
    assert (reference_norm(x_adv - x, "linf") <= 0.08 + 1e-12).all()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AdversarialTraining(eps=0.0), "eps"),
        (lambda: AdversarialTraining(eps=0.1, clean_weight=1.5), "clean_weight"),
        (lambda: AdversarialTraining(eps=0.1, norm="l3"), "norm"),
        (lambda: AdversarialTraining(eps=0.1, steps=0), "steps"),
        (lambda: TRADES(eps=0.1, beta=-1.0), "beta"),
        (lambda: TRADES(eps=0.1, norm="l1"), "norm"),
    ],
)
def test_bad_settings_are_refused_by_name(build, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=match):
        build()


@pytest.mark.parametrize("objective", [pgd_training(0.1), TRADES(eps=0.1)])
def test_probability_targets_are_refused(objective) -> None:  # type: ignore[no-untyped-def]
    model, x, _ = _batch()
    with pytest.raises(InvalidArgumentError, match="integer class labels"):
        objective(model, x, torch.full((6, 3), 1 / 3), torch.Generator())


def test_trades_loss_is_cross_entropy_at_beta_zero_and_the_formula_otherwise() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    adversarial = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(trades_loss(clean, adversarial, y, 0.0), F.cross_entropy(clean, y))
    p, q = clean.softmax(1), adversarial.softmax(1)
    kl = (p * (p / q).log()).sum(1).mean()
    torch.testing.assert_close(
        trades_loss(clean, adversarial, y, 2.5), F.cross_entropy(clean, y) + 2.5 * kl
    )
    # the objective itself reduces to cross-entropy at beta = 0
    model, x, labels = _batch(4)
    loss = TRADES(eps=0.1, beta=0.0)(model, x, labels, torch.Generator())
    assert torch.equal(loss, F.cross_entropy(model(x), labels))


def test_trades_inner_maximum_stays_in_the_ball_and_raises_the_divergence() -> None:
    model, x, _ = _batch(5)
    grads = [p.requires_grad for p in model.parameters()]
    trades = TRADES(eps=0.25, beta=1.0, steps=10)
    x_adv = trades.inner_maximum(model, x, torch.Generator().manual_seed(1))
    assert model.training and [p.requires_grad for p in model.parameters()] == grads
    assert (reference_norm(x_adv - x, "linf") <= 0.25 + 1e-12).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    with torch.no_grad():
        model.eval()
        p = model(x).softmax(1)
        start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        q_start, q_adv = model(start.clamp(0, 1)).softmax(1), model(x_adv).softmax(1)
    kl_start = (p * (p / q_start).log()).sum(1)
    kl_adv = (p * (p / q_adv).log()).sum(1)
    assert (kl_adv > kl_start).all()
    assert float(kl_adv.mean()) > 100 * float(kl_start.mean())


def test_adversarial_training_makes_a_digits_mlp_more_robust() -> None:
    from vulnscope.data import load_digits

    train, test = load_digits("train"), load_digits("test")
    x, y = train.x[:600], train.y[:600]

    def fit(objective):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        return train_classifier(model, x, y, epochs=15, lr=3e-3, seed=0, objective=objective)

    def robust(model):  # type: ignore[no-untyped-def]
        result = PGD(eps=0.1, steps=20, early_stop=True, seed=0)(model, test.x, test.y)
        return 1.0 - float(result.success.double().mean())

    plain, defended = fit(None), fit(pgd_training(0.1, steps=5))
    assert robust(defended) > robust(plain) + 0.05  # measured: 0.650 against 0.557


@pytest.mark.parametrize("objective", [pgd_training(0.2, steps=4), TRADES(eps=0.2, steps=4)])
def test_examples_are_crafted_in_eval_mode_and_the_training_mode_comes_back(objective) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = (
        torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(6, 16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(16, 3),
        )
        .double()
        .train()
    )
    x = random_inputs(6, 8, SHAPE, (0.0, 1.0))
    y = torch.arange(8) % 3

    def craft(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        if isinstance(objective, TRADES):
            return objective.inner_maximum(model, x, generator)
        return objective.adversarial_examples(model, x, y, generator)

    # dropout active while crafting would draw fresh masks: two crafts would differ
    assert torch.equal(craft(1), craft(1))
    assert all(module.training for module in model.modules())
    assert all(parameter.requires_grad for parameter in model.parameters())
