"""Defensive distillation and CURE, against independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from helpers import random_inputs, tiny_classifier
from vulnscope.defences import (
    CURE,
    Tempered,
    curvature_penalty,
    defensive_distillation,
    soft_labels,
)
from vulnscope.diagnostics.hessian import loss_curvature
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

SHAPE = (1, 2, 3)


def test_soft_labels_are_the_teachers_softmax_at_temperature_t() -> None:
    teacher = tiny_classifier(0, SHAPE, classes=5).train()
    x = random_inputs(0, 7, SHAPE, (0.0, 1.0))
    labels = soft_labels(teacher, x, 20.0, batch_size=3)
    with torch.no_grad():
        expected = torch.softmax(teacher.eval()(x).double() / 20.0, dim=1)
    teacher.train()
    torch.testing.assert_close(labels, expected, rtol=0, atol=1e-15)
    assert labels.dtype == torch.float64 and teacher.training  # the mode was given back
    hotter = soft_labels(teacher, x, 200.0)
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert (entropy(hotter) > entropy(labels)).all()


def test_tempered_divides_the_logits() -> None:
    model = tiny_classifier(1, SHAPE)
    x = random_inputs(1, 3, SHAPE, (0.0, 1.0))
    torch.testing.assert_close(Tempered(model, 4.0)(x), model(x) / 4.0)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        Tempered(model, 0.0)
    with pytest.raises(InvalidTypeError, match="model"):
        Tempered("model", 2.0)  # type: ignore[arg-type]


def test_distilled_student_fits_the_teachers_soft_labels_at_t() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 2, 3, generator=generator, dtype=torch.float64)
    y = (x.flatten(1)[:, 0] > x.flatten(1)[:, 1]).long() + 2 * (x.flatten(1)[:, 2] > 0.5).long()

    def factory() -> torch.nn.Module:
        return tiny_classifier(int(torch.randint(0, 1000, (1,))), SHAPE, classes=4, hidden=16)

    result = defensive_distillation(factory, x, y, temperature=10.0, epochs=60, lr=1e-2)
    assert not result.student.training and result.temperature == 10.0
    targets = soft_labels(result.teacher, x, 10.0)
    student = soft_labels(result.student, x, 10.0)
    kl = (targets * (targets / student).log()).sum(1).mean()
    assert float(kl) < 0.01
    agreement = (result.student(x).argmax(1) == result.teacher(x).argmax(1)).double().mean()
    assert float(agreement) > 0.95
    # a given teacher is used as is
    again = defensive_distillation(
        factory, x, y, temperature=10.0, teacher=result.teacher, epochs=1
    )
    assert again.teacher is result.teacher


def test_cure_penalty_is_h_squared_times_the_hessian_vector_product_for_small_h() -> None:
    model = tiny_classifier(2, SHAPE, classes=3, hidden=6)  # tanh: a smooth loss
    x = random_inputs(2, 4, SHAPE, (0.0, 1.0))
    y = torch.tensor([0, 1, 2, 0])
    h = 1e-4
    losses, penalties = curvature_penalty(model, x, y, h=h)
    curvature = loss_curvature(model, x, y)  # the diagnostics' Hessian machinery
    z = curvature.gradient.sign()
    z = z / z.norm(dim=1, keepdim=True)
    expected = h**2 * curvature.hvp(z).pow(2).sum(1)
    torch.testing.assert_close(penalties, expected, rtol=1e-3, atol=0)
    torch.testing.assert_close(losses, F.cross_entropy(model(x), y, reduction="none"))


def test_cure_gaussian_direction_estimates_the_hessian_frobenius_norm() -> None:
    model = tiny_classifier(3, SHAPE, classes=3, hidden=6)
    x = random_inputs(3, 1, SHAPE, (0.0, 1.0)).expand(4000, *SHAPE).contiguous()
    y = torch.zeros(4000, dtype=torch.long)
    h = 1e-4
    _, penalties = curvature_penalty(
        model, x, y, h=h, direction="gaussian", generator=torch.Generator().manual_seed(0)
    )
    hessian = torch.autograd.functional.hessian(
        lambda point: F.cross_entropy(model(point[None]), y[:1]), x[0]
    ).reshape(6, 6)
    frobenius_squared = float(hessian.pow(2).sum())
    estimate = float(penalties.detach().mean()) / h**2
    assert estimate == pytest.approx(frobenius_squared, rel=0.1)


def test_cure_objective_is_cross_entropy_at_gamma_zero_and_differentiable() -> None:
    model = tiny_classifier(4, SHAPE, classes=3).train()
    x = random_inputs(4, 5, SHAPE, (0.0, 1.0))
    y = torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(
        CURE(gamma=0.0)(model, x, y, torch.Generator()), F.cross_entropy(model(x), y)
    )
    loss = CURE(h=0.3, gamma=2.0)(model, x, y, torch.Generator())
    losses, penalties = curvature_penalty(model, x, y, h=0.3)
    torch.testing.assert_close(loss, losses.mean() + 2.0 * penalties.mean())
    penalties.sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_cure_settings_are_checked_by_name() -> None:
    for kwargs, match in (
        ({"h": 0.0}, "h"),
        ({"gamma": -1.0}, "gamma"),
        ({"direction": "random"}, "direction"),
    ):
        with pytest.raises(InvalidArgumentError, match=match):
            CURE(**kwargs)  # type: ignore[arg-type]
    model = tiny_classifier(5, SHAPE)
    x = random_inputs(5, 2, SHAPE, (0.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="generator"):
        curvature_penalty(model, x, torch.tensor([0, 1]), h=0.1, direction="gaussian")
