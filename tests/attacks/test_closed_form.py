"""A guaranteed-vulnerable case: a linear model whose minimal perturbation is known exactly.

For logits ``(0, w.x + c)`` the class flips when ``w.x + c`` changes sign. From a point
with ``w.x + c = -m``, the smallest perturbation that flips it has size ``m / |w|_*``,
the dual norm: ``|w|_1`` for Linf, ``|w|_2`` for L2, ``|w|_inf`` for L1. Nothing smaller
can succeed, and PGD must find one of (almost) exactly that size.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import reference_norm
from vulnscope.attacks import APGD, BIM, PGD
from vulnscope.evaluate import robust_accuracy

DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
BOUNDS = (-100.0, 100.0)  # wide, so that the box never blocks the minimal perturbation


def _linear_problem(margin=1.0, dim=12, n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=generator, dtype=torch.float64)
    c = 0.3
    model = nn.Linear(dim, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(dim, dtype=torch.float64), w]))
        model.bias.copy_(torch.tensor([0.0, c], dtype=torch.float64))
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    # move each point along w so that w.x + c = -margin exactly: class 0, margin `margin`
    x = x - ((x @ w + c + margin) / (w @ w))[:, None] * w
    y = torch.zeros(n, dtype=torch.int64)
    return model.eval(), x, y, w


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_reaches_the_closed_form_minimal_perturbation(norm):
    model, x, y, w = _linear_problem()
    minimal = 1.0 / float(reference_norm(w[None], DUAL[norm]))
    attack = PGD(
        norm=norm,
        eps=1.01 * minimal,
        steps=50,
        step_size=0.1 * minimal,
        random_start=False,
        bounds=BOUNDS,
        l1_sparsity=1e-9,
    )
    result = attack(model, x, y)
    assert result.success.all()
    assert (result.norms <= 1.01 * minimal * (1 + 1e-9)).all()
    assert (result.norms >= minimal * (1 - 1e-9)).all()  # nothing smaller can succeed

    below = attack.replace(eps=0.99 * minimal)(model, x, y)
    assert not below.success.any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_robust_accuracy_drops_exactly_at_the_minimal_perturbation(norm):
    model, x, y, w = _linear_problem(seed=3)
    minimal = 1.0 / float(reference_norm(w[None], DUAL[norm]))
    curve = robust_accuracy(
        model,
        x,
        y,
        attack=APGD(norm=norm, steps=50, bounds=BOUNDS),
        epsilons=[0.98 * minimal, 0.999 * minimal, 1.001 * minimal, 1.02 * minimal],
    )
    assert curve.accuracy.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_bim_reaches_the_linf_minimal_perturbation():
    model, x, y, w = _linear_problem(seed=5)
    minimal = 1.0 / float(w.abs().sum())
    result = BIM(eps=1.01 * minimal, step_size=minimal / 10, bounds=BOUNDS)(model, x, y)
    assert result.success.all()
