"""A defended model keeps the attack framework's contract, like any other model."""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import ATTACK_CASES, check_attack_contract, random_inputs, tiny_classifier
from vulnscope.defences import (
    CURE,
    TRADES,
    ManifoldMixup,
    activation_dropout,
    defensive_distillation,
    fast_fgsm_training,
    parseval_retraction,
    pgd_training,
)
from vulnscope.defences.magnet import DigitsAutoencoder, fit_magnet
from vulnscope.models import train_classifier

SHAPE = (1, 2, 3)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = random_inputs(0, 48, SHAPE, (0.0, 1.0))
    return x, (x.flatten(1)[:, :3].sum(1) * 4 / 3).long().clamp(0, 3)


def _trained(objective=None, after_step=None):  # type: ignore[no-untyped-def]
    x, y = _data()
    return train_classifier(
        tiny_classifier(0, SHAPE),
        x,
        y,
        epochs=3,
        batch_size=16,
        lr=1e-2,
        objective=objective,
        after_step=after_step,
    )


def _distilled():  # type: ignore[no-untyped-def]
    x, y = _data()
    factory = functools.partial(tiny_classifier, 1, SHAPE)
    return defensive_distillation(factory, x, y, temperature=20.0, epochs=3, lr=1e-2).student


def _with_dropout():  # type: ignore[no-untyped-def]
    model = tiny_classifier(0, SHAPE)
    with activation_dropout(model, 0.3, torch.Generator().manual_seed(0)):
        x, y = _data()
        return train_classifier(model, x, y, epochs=2, batch_size=16)


DEFENDED = {
    "pgd": lambda: _trained(pgd_training(0.2, steps=3)),
    "fgsm": lambda: _trained(fast_fgsm_training(0.2)),
    "trades": lambda: _trained(TRADES(eps=0.2, steps=3)),
    "cure": lambda: _trained(CURE(h=0.3, gamma=1.0)),
    "mixup": lambda: _trained(ManifoldMixup()),
    "parseval": lambda: _trained(after_step=functools.partial(parseval_retraction, beta=0.01)),
    "dropout": _with_dropout,
    "distill": _distilled,
}
CASES = [(name, norms[0], build) for name, norms, build in ATTACK_CASES]


@pytest.fixture(scope="module", params=sorted(DEFENDED))
def defended(request):  # type: ignore[no-untyped-def]
    return DEFENDED[request.param]()


@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=[c[0] for c in CASES])
def test_attacks_keep_the_contract_on_defended_models(defended, name, norm, build):  # type: ignore[no-untyped-def]
    x = random_inputs(7, 3, SHAPE, (0.0, 1.0))
    y = torch.tensor([0, 1, 2])
    check_attack_contract(defended, build, x, y, None, norm=norm, eps=0.3, bounds=(0.0, 1.0))


@pytest.fixture(scope="module")
def magnet():  # type: ignore[no-untyped-def]
    classifier = tiny_classifier(2, (1, 8, 8), classes=4)
    autoencoder = DigitsAutoencoder(seed=0).double()
    return fit_magnet(classifier, autoencoder, random_inputs(2, 64, (1, 8, 8), (0.0, 1.0)))


@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=[c[0] for c in CASES])
def test_attacks_keep_the_contract_on_the_magnet_pipeline(magnet, name, norm, build):  # type: ignore[no-untyped-def]
    x = random_inputs(8, 3, (1, 8, 8), (0.0, 1.0))
    y = torch.tensor([0, 1, 2])
    check_attack_contract(magnet, build, x, y, None, norm=norm, eps=0.3, bounds=(0.0, 1.0))
