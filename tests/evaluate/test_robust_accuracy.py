from __future__ import annotations

import pytest
import torch

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import APGD, FGSM, PGD
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate import accuracy, predict, robust_accuracy

SHAPE = (1, 3, 3)
EPSILONS = [0.02, 0.05, 0.1, 0.2]


@pytest.fixture
def problem():
    model = tiny_classifier(11, SHAPE, classes=5, hidden=16)
    x = random_inputs(11, 80, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    y[:8] = (y[:8] + 1) % 5  # a few clean mistakes
    return model, x, y


def test_each_budget_adds_to_the_previous_one_exactly_what_a_fresh_attack_finds(problem):
    """success[k] == (fresh attack at eps_k on the points robust at eps_{k-1}) | success[k-1]."""
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    curve = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    broken = predict(model, x) != y
    for k, eps in enumerate(EPSILONS):
        fresh = attack.replace(eps=eps, early_stop=True)(model, x, y).success
        expected = broken | fresh
        assert torch.equal(curve.success[k], expected)
        broken = expected
    assert curve.accuracy.tolist() == pytest.approx((1 - curve.success.double().mean(1)).tolist())


def test_curve_is_at_most_the_per_budget_classic_attack(problem):
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    curve = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    for k, eps in enumerate(EPSILONS):
        classic = attack.replace(eps=eps)(model, x, y)
        assert curve.accuracy[k] <= 1 - classic.success_rate + 1e-12
        assert (curve.success[k] | ~classic.success).all()


def test_success_never_decreases_with_the_budget(problem):
    model, x, y = problem
    curve = robust_accuracy(model, x, y, attack=APGD(steps=10), epsilons=EPSILONS)
    assert (curve.success[1:] | ~curve.success[:-1]).all()
    assert (curve.accuracy[1:] <= curve.accuracy[:-1]).all()


def test_order_of_epsilons_does_not_matter(problem):
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    ordered = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    shuffled = robust_accuracy(model, x, y, attack=attack, epsilons=[0.1, 0.02, 0.2, 0.05])
    order = [2, 0, 3, 1]
    assert torch.equal(shuffled.success, ordered.success[order])
    assert shuffled.epsilons.tolist() == [0.1, 0.02, 0.2, 0.05]


def test_zero_budget_is_clean_accuracy(problem):
    model, x, y = problem
    curve = robust_accuracy(model, x, y, attack=FGSM(), epsilons=[0.0, 0.0])
    clean = accuracy(model, x, y)
    assert curve.clean_accuracy == pytest.approx(clean) == pytest.approx(72 / 80)
    assert curve.accuracy.tolist() == pytest.approx([clean, clean])
    assert curve.gradient_evals == 0


def test_samples_already_wrong_are_never_attacked(problem):
    model, x, y = problem
    wrong = (y + 1) % 5
    curve = robust_accuracy(
        model, x, wrong.where(predict(model, x) == y, y), attack=PGD(steps=3), epsilons=[0.1]
    )
    assert curve.forward_evals == 0 and curve.accuracy.tolist() == [0.0]


def test_batches_give_the_same_curve(problem):
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    whole = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    batched = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS, batch_size=7)
    assert torch.equal(whole.success, batched.success)


def test_early_stop_false_keeps_the_attack_as_given(problem):
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    curve = robust_accuracy(model, x, y, attack=attack, epsilons=[0.2], early_stop=False)
    classic = attack.replace(eps=0.2)(model, x, y)
    assert torch.equal(curve.success[0], classic.success | (predict(model, x) != y))
    assert "early_stop=False" in curve.attack


def test_curve_attacks_only_points_still_robust(problem):
    """Each budget costs at most steps x (points robust at the previous budget)."""
    model, x, y = problem
    attack = PGD(steps=10, random_start=False)
    curve = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    robust_before = [int((predict(model, x) == y).sum())]
    robust_before += [int((~row).sum()) for row in curve.success[:-1]]
    assert curve.gradient_evals <= 10 * sum(robust_before)
    separate = sum(attack.replace(eps=e)(model, x, y).gradient_evals for e in EPSILONS)
    assert curve.gradient_evals < separate


def test_to_dict_is_json_ready(problem):
    model, x, y = problem
    record = robust_accuracy(model, x, y, attack=FGSM(), epsilons=[0.1]).to_dict()
    assert record["epsilons"] == [0.1] and isinstance(record["robust_accuracy"][0], float)
    assert record["norm"] == "linf" and record["attack"].startswith("FGSM(")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epsilons": []}, InvalidArgumentError, "epsilons must be a non-empty sequence"),
        (
            {"epsilons": [0.1, -0.2]},
            InvalidArgumentError,
            r"epsilons\[1\] must be >= 0.0, got -0.2",
        ),
        ({"epsilons": "0.1"}, InvalidArgumentError, "epsilons must be a non-empty sequence"),
        ({"attack": PGD(targeted=True)}, InvalidArgumentError, "attack must be untargeted"),
        ({"attack": "pgd"}, InvalidTypeError, "attack must be a vulnscope Attack, got str"),
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(problem, kwargs, error, message):
    model, x, y = problem
    arguments = {"attack": PGD(steps=2), "epsilons": [0.1], **kwargs}
    with pytest.raises(error, match=message):
        robust_accuracy(model, x, y, **arguments)


def test_accepts_a_tensor_of_epsilons(problem):
    model, x, y = problem
    curve = robust_accuracy(model, x, y, attack=FGSM(), epsilons=torch.tensor([0.0, 0.1]))
    assert curve.epsilons.tolist() == pytest.approx([0.0, 0.1])


class _EpsByEpsPGD(PGD):
    """PGD without the ladder: Attack.sweep falls back to one run per budget."""

    def run_curve(self, model, x, y, *, epsilons, generator):
        return None


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ladder_equals_one_run_per_budget_on_the_digits_cnn(digits_cnn, digits_test, norm):
    x, y = digits_test.x[:150], digits_test.y[:150]
    epsilons = [0.02, 0.05, 0.1, 0.15, 0.2] if norm == "linf" else [0.25, 0.5, 1.0]
    step = 0.01 if norm == "linf" else 0.05
    ladder = PGD(norm=norm, steps=40, step_size=step, random_start=False, early_stop=True)
    sequential = _EpsByEpsPGD(
        norm=norm, steps=40, step_size=step, random_start=False, early_stop=True
    )
    fast = ladder.sweep(digits_cnn, x, y, epsilons=epsilons)
    slow = sequential.sweep(digits_cnn, x, y, epsilons=epsilons)
    assert torch.equal(fast.success, slow.success)
    assert fast.gradient_evals <= slow.gradient_evals + len(epsilons) * 150  # + final evaluations


def test_sweep_rejects_unordered_or_zero_budgets(problem):
    model, x, y = problem
    with pytest.raises(InvalidArgumentError, match="epsilons must increase strictly from > 0"):
        PGD(steps=2).sweep(model, x, y, epsilons=[0.2, 0.1])
    with pytest.raises(InvalidArgumentError, match="epsilons must increase strictly from > 0"):
        PGD(steps=2).sweep(model, x, y, epsilons=[0.0, 0.1])
