"""certified_radius against the closed form of a linear classifier, and against attacks.

For logits ``W x + b``, the margin to class j falls by ``eps ||w_y - w_j||_*`` at worst
within an eps-ball (the dual norm: L1 for an L∞ ball, L2 for an L2 ball), so while the
ball stays inside the box the exact radius is ``min_j margin_j / ||w_y - w_j||_*``. Every
method is exact on a linear map, so the bisection must land within ``tol`` below it.
"""

from __future__ import annotations

import pytest
import torch
from certify_networks import Spec, build, points
from torch import nn

from vulnscope.attacks import PGD
from vulnscope.certify import METHODS, certified_radius, certify


def linear_classifier() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        model[1].weight.mul_(4.0)
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("norm", "dual_norm"), [("linf", 1.0), ("l2", 2.0)])
def test_the_radius_of_a_linear_classifier_is_its_closed_form(method, norm, dual_norm):
    model = linear_classifier()
    generator = torch.Generator().manual_seed(3)
    x = 0.35 + 0.3 * torch.rand(6, 1, 4, 4, generator=generator, dtype=torch.float64)
    labels = model(x).argmax(1).detach()
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    rows = weight[labels].unsqueeze(1) - weight.unsqueeze(0)  # (N, C, 16)
    margins = rows @ x.flatten(1).unsqueeze(-1) + (bias[labels].unsqueeze(1) - bias).unsqueeze(-1)
    ratios = margins.squeeze(-1) / rows.norm(p=dual_norm, dim=-1)
    exact = ratios.masked_fill(torch.nn.functional.one_hot(labels, 4).bool(), torch.inf)
    exact = exact.amin(dim=1)
    assert bool((exact < 0.35).all())  # the balls stay inside the box: the closed form holds
    tol = 1e-3
    radius = certified_radius(model, x, labels, norm=norm, method=method, tol=tol, max_eps=0.5)
    assert bool((radius <= exact).all())
    assert bool((radius >= exact - tol).all())
    at_radius = certify(model, x, labels, norm=norm, eps=float(radius.min()), method=method)
    assert bool(at_radius.certified.all())


def test_a_class_no_input_of_the_box_can_leave_is_certified_up_to_max_eps():
    """``x + 0.1 > 0`` on all of [0, 1]: the box, not the ball, keeps the class."""
    model = nn.Sequential(nn.Linear(1, 2)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.1, 0.0]))
    x, label = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([0])
    radius = certified_radius(model.eval(), x, label, norm="linf", max_eps=0.8)
    assert float(radius[0]) == 0.8


def test_the_radius_of_a_relu_network_survives_attacks_and_a_wrong_label_gets_zero():
    model = build(Spec("mlp", "relu", "max", False, False, False, False, seed=7, width=16))
    x = points(7, 4)
    labels = model(x).argmax(1).detach()
    labels[3] = (labels[3] + 1) % 3
    radius = certified_radius(model, x, labels, method="crown", tol=1e-3, max_eps=0.5)
    assert float(radius[3]) == 0.0
    assert bool((radius[:3] > 0).all())
    for k in range(3):
        attack = PGD(eps=float(radius[k]), steps=50, loss="margin", restarts=3, seed=k)
        assert not bool(attack(model, x[k : k + 1], labels[k : k + 1]).success.any())
