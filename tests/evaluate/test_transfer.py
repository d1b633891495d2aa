from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import PGD, FisherAttack
from vulnscope.data import load_digits
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.evaluate import Transfer, transfer_between_halves, transferability
from vulnscope.evaluate.transfer import split_halves
from vulnscope.models import DigitsMLP

SHAPE = (1, 2, 3)


def _problem(n=40, seed=0):
    model = tiny_classifier(seed, SHAPE, classes=4)
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 4  # five clean mistakes: never attacked
    return model, x, y


ATTACK = PGD(eps=0.3, steps=10, seed=0)


def test_a_model_scored_against_itself_transfers_every_example_that_fooled_it():
    model, x, y = _problem()
    result = transferability(model, model, x, y, attack=ATTACK)
    assert result.n == 40 and result.n_attacked == 35
    assert not result.attacked[:5].any() and result.attacked[5:].all()
    assert result.n_source_fooled > 0
    assert torch.equal(result.target_fooled, result.source_fooled)
    assert result.transfer_rate == 1.0
    assert result.target_fooled_rate == result.source_success_rate
    # the source success is the attack's own success on the attacked points
    direct = ATTACK(model, x[5:], y[5:])
    assert torch.equal(result.source_fooled[5:], direct.success)
    assert torch.equal(result.x_adv[5:], direct.x_adv) and torch.equal(result.x_adv[:5], x[:5])


def test_two_identical_copies_transfer_everything():
    model, x, y = _problem(seed=1)
    result = transferability(model, copy.deepcopy(model), x, y, attack=ATTACK)
    assert result.n_source_fooled > 0
    assert result.n_transferred == result.n_source_fooled == result.n_target_fooled
    assert result.transfer_rate == 1.0


class _Constant(nn.Module):
    """Always predicts ``label``, whatever its input."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 4, dtype=x.dtype)
        logits[:, self.label] = 1.0
        return logits


def test_a_constant_target_is_never_fooled():
    model, x, y = _problem(n=60, seed=2)
    label = int(torch.mode(y).values)
    result = transferability(model, _Constant(label), x, y, attack=ATTACK)
    # only the points of the constant's class that the source gets right are attacked
    expected = (y == label) & (model(x).argmax(1) == y)
    assert torch.equal(result.attacked, expected) and result.n_source_fooled > 0
    assert result.n_transferred == result.n_target_fooled == 0
    assert result.transfer_rate == 0.0 and result.target_fooled_rate == 0.0
    assert result.target_accuracy == pytest.approx(float((y == label).double().mean()))


def test_without_requiring_the_source_to_be_correct_every_target_correct_point_is_attacked():
    model, x, y = _problem(seed=3)
    other = tiny_classifier(7, SHAPE, classes=4)
    target_ok = other(x).argmax(1) == y
    both = transferability(model, other, x, y, attack=ATTACK)
    loose = transferability(model, other, x, y, attack=ATTACK, require_source_correct=False)
    assert torch.equal(loose.attacked, target_ok)
    assert torch.equal(both.attacked, target_ok & (model(x).argmax(1) == y))
    assert (
        loose.n_transferred <= loose.n_source_fooled
        and loose.n_transferred <= loose.n_target_fooled
    )


def test_a_label_only_target_counts_like_its_logits():
    model, x, y = _problem(seed=4)
    other = tiny_classifier(8, SHAPE, classes=4)
    by_logits = transferability(model, other, x, y, attack=ATTACK)
    by_labels = transferability(model, lambda z: other(z).argmax(1), x, y, attack=ATTACK)
    assert by_logits.to_dict() == by_labels.to_dict()


def test_to_dict_is_json_ready_even_when_nothing_fools_the_source():
    model, x, y = _problem(seed=5)
    result = transferability(model, model, x, y, attack=ATTACK.replace(eps=0.0))
    assert result.n_source_fooled == 0 and math.isnan(result.transfer_rate)
    record = result.to_dict()
    assert record["transfer_rate"] is None and record["n_attacked"] == 35
    json.dumps(record, allow_nan=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attack": "pgd"}, InvalidTypeError, "attack must be a vulnscope Attack"),
        (
            {"attack": PGD(eps=0.1, targeted=True)},
            InvalidArgumentError,
            "attack must be untargeted",
        ),
        ({"source": 3}, InvalidTypeError, "source must be a callable"),
        ({"target": lambda z: z.flatten(1)[:, 0]}, ModelError, "target must return logits"),
        ({"y": torch.zeros(3, dtype=torch.int64)}, InvalidArgumentError, r"y must .*\(40,\)"),
        ({"require_source_correct": 1}, InvalidTypeError, "require_source_correct must be"),
    ],
)
def test_transferability_refuses_bad_arguments(kwargs, error, message):
    model, x, y = _problem()
    arguments = {"source": model, "target": model, "x": x, "y": y, "attack": ATTACK, **kwargs}
    source, target = arguments.pop("source"), arguments.pop("target")
    x, y = arguments.pop("x"), arguments.pop("y")
    with pytest.raises(error, match=message):
        transferability(source, target, x, y, **arguments)


@pytest.mark.parametrize("n", [2, 7, 100])
def test_halves_are_disjoint_and_cover_the_data(n):
    first, second = split_halves(n, seed=3)
    assert first.numel() == n // 2 and second.numel() == n - n // 2
    assert torch.equal(torch.cat([first, second]).sort().values, torch.arange(n))
    again = split_halves(n, seed=3)
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
    assert n < 7 or not torch.equal(split_halves(n, seed=4)[0], first)


def test_transfer_between_halves_trains_one_network_per_half():
    train, test = load_digits("train").take(160), load_digits("test").take(60)
    result = transfer_between_halves(
        train,
        test,
        attack=PGD(eps=0.2, steps=5),
        architecture=lambda: DigitsMLP(hidden=16),
        seed=1,
        epochs=3,
    )
    first, second = result.first_half, result.second_half
    assert first.numel() == second.numel() == 80
    assert not set(first.tolist()) & set(second.tolist())
    a, b = result.models
    assert not torch.equal(a.fc1.weight, b.fc1.weight) and not a.training and not b.training
    for direction, (source, target) in (
        (result.first_to_second, (a, b)),
        (result.second_to_first, (b, a)),
    ):
        assert isinstance(direction, Transfer)
        # the same measurement as calling transferability on the trained networks
        direct = transferability(source, target, test.x, test.y, attack=PGD(eps=0.2, steps=5))
        assert direction.to_dict() == direct.to_dict()
    json.dumps(result.to_dict(), allow_nan=False)


def test_transfer_between_halves_refuses_bad_arguments():
    train, test = load_digits("train").take(10), load_digits("test").take(5)
    with pytest.raises(InvalidArgumentError, match="architecture must be one of"):
        transfer_between_halves(train, test, attack=ATTACK, architecture="resnet")
    with pytest.raises(InvalidTypeError, match="train_data must be an ImageData"):
        transfer_between_halves((train.x, train.y), test, attack=ATTACK)
    with pytest.raises(InvalidArgumentError, match="epochs must be an integer >= 1"):
        transfer_between_halves(train, test, attack=ATTACK, epochs=0)
    with pytest.raises(InvalidArgumentError, match="attack must be untargeted"):
        transfer_between_halves(train, test, attack=FisherAttack(eps=0.1, targeted=True))
