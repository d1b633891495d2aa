from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vulnscope.attacks import FGSM


def _softmax_regression(seed=0, dim=10, classes=4):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(dim, classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=generator, dtype=torch.float64))
    x = torch.rand(8, dim, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (8,), generator=generator)
    return model.eval(), x, y


def test_fgsm_is_one_signed_step_of_the_analytic_gradient():
    """For softmax regression, d CE / dx = W^T (softmax(Wx + b) - onehot(y))."""
    model, x, y = _softmax_regression()
    probabilities = torch.softmax(model(x), dim=1).detach()
    gradient = (probabilities - F.one_hot(y, 4).double()) @ model.weight.detach()
    expected = (x + 0.05 * gradient.sign()).clamp(0, 1)
    torch.testing.assert_close(FGSM(eps=0.05)(model, x, y).x_adv, expected)


def test_fgm_l2_is_one_normalised_step():
    model, x, y = _softmax_regression(seed=1)
    probabilities = torch.softmax(model(x), dim=1).detach()
    gradient = (probabilities - F.one_hot(y, 4).double()) @ model.weight.detach()
    step = 0.3 * gradient / gradient.norm(dim=1, keepdim=True)
    bounds = (-10.0, 10.0)
    torch.testing.assert_close(FGSM(norm="l2", eps=0.3, bounds=bounds)(model, x, y).x_adv, x + step)


def test_targeted_fgsm_steps_down_the_target_loss():
    model, x, y = _softmax_regression(seed=2)
    target = (y + 1) % 4
    probabilities = torch.softmax(model(x), dim=1).detach()
    gradient = (probabilities - F.one_hot(target, 4).double()) @ model.weight.detach()
    expected = (x - 0.05 * gradient.sign()).clamp(0, 1)
    result = FGSM(eps=0.05, targeted=True)(model, x, y, target=target)
    torch.testing.assert_close(result.x_adv, expected)


def test_fgsm_costs_one_gradient_per_sample():
    model, x, y = _softmax_regression()
    result = FGSM(eps=0.05)(model, x, y)
    assert (result.forward_evals, result.gradient_evals) == (8, 8)
