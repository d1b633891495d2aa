"""Quadratic-model bounds on the minimal perturbation, against numpy roots and explicit Hessians."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.diagnostics import curvature_bounds
from vulnscope.diagnostics.curvature_bounds import quadratic_step
from vulnscope.errors import InvalidArgumentError


def smallest_root(slope: float, curvature: float, rise: float) -> float:
    """Smallest s >= 0 with slope·s + ½ curvature·s² = rise, by numpy.roots (0 if rise <= 0)."""
    if rise <= 0:
        return 0.0
    roots = np.roots([0.5 * curvature, slope, -rise])  # leading zeros are dropped
    real = [r.real for r in roots if abs(r.imag) <= 1e-12 * max(1.0, abs(r.real))]
    positive = [r for r in real if r >= 0]
    return min(positive) if positive else math.inf


def test_quadratic_step_is_the_smallest_non_negative_root():
    slopes = [0.0, 0.3, 1.7, -0.8]
    curvatures = [-2.0, -0.05, 0.0, 0.5, 3.0]
    rises = [-0.3, 0.0, 0.2, 1.5]
    generator = np.random.default_rng(0)
    cases = list(itertools.product(slopes, curvatures, rises))
    cases += [tuple(row) for row in generator.normal(size=(200, 3)) * [1.0, 2.0, 1.0]]
    # tangent cases: the parabola just touches the level (discriminant exactly 0)
    cases += [(2.0, -2.0, 1.0), (1.0, -0.5, 1.0)]
    slope, curvature, rise = (
        torch.tensor(column, dtype=torch.float64) for column in zip(*cases, strict=True)
    )
    found = quadratic_step(slope, curvature, rise)
    expected = torch.tensor([smallest_root(*case) for case in cases], dtype=torch.float64)
    assert torch.equal(torch.isinf(found), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(found[finite], expected[finite], rtol=1e-6, atol=1e-12)
    # the named cases: zero where no rise is needed, inf where the parabola never gets there
    assert float(quadratic_step(*map(torch.tensor, (1.0, 1.0, 0.0)))) == 0.0
    assert float(quadratic_step(*map(torch.tensor, (1.0, 1.0, -1.0)))) == 0.0
    assert math.isinf(float(quadratic_step(*map(torch.tensor, (0.0, 0.0, 1.0)))))
    assert math.isinf(float(quadratic_step(*map(torch.tensor, (0.0, -1.0, 1.0)))))
    assert math.isinf(float(quadratic_step(*map(torch.tensor, (1.0, -1.0, 1.0)))))  # max is 1/2
    assert float(quadratic_step(*map(torch.tensor, (2.0, 0.0, 1.0)))) == pytest.approx(0.5)
    assert float(quadratic_step(*map(torch.tensor, (0.0, 2.0, 1.0)))) == pytest.approx(1.0)
    assert found.dtype == torch.float64


def confident_model(seed: int) -> nn.Sequential:
    """A tiny tanh MLP whose last layer is scaled so that some predictions are confident."""
    model = tiny_classifier(seed, (2, 3), 4, hidden=10)
    with torch.no_grad():
        model[3].weight.mul_(10.0)
    return model


def explicit_quantities(model, x: torch.Tensor, y: torch.Tensor):
    """Per sample: loss, gradient (n,), Hessian (n, n), all by autograd."""
    out = []
    for i in range(x.shape[0]):

        def loss(sample, i=i):
            return nn.functional.cross_entropy(model(sample[None]), y[i : i + 1])

        sample = x[i].clone().requires_grad_(True)
        value = loss(sample)
        (gradient,) = torch.autograd.grad(value, sample)
        hessian = torch.autograd.functional.hessian(loss, x[i])
        n = x[i].numel()
        out.append((float(value.detach()), gradient.flatten(), hessian.reshape(n, n)))
    return out


def inputs_and_labels():
    model = confident_model(0)
    x = random_inputs(1, 8, (2, 3), (-2.0, 2.0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % 4  # one misclassified sample
    return model, x, y


def reference_bounds(loss, gradient, hessian, classes):
    values, vectors = torch.linalg.eigh(hessian)
    top, u = float(values[-1]), vectors[:, -1]
    norm = float(gradient.norm())
    along_top = abs(float(gradient @ u))
    unit = gradient / norm
    along_gradient = float(unit @ hessian @ unit)
    lower = smallest_root(norm, max(top, 0.0), math.log(2) - loss)
    rise = math.log(classes) - loss
    upper = min(smallest_root(along_top, top, rise), smallest_root(norm, along_gradient, rise))
    return {
        "lower": lower,
        "upper": upper,
        "loss": loss,
        "gradient_norm": norm,
        "top_curvature": top,
        "gradient_along_top": along_top,
        "gradient_curvature": along_gradient,
    }


def test_bounds_match_an_independent_computation_from_the_explicit_hessian():
    model, x, y = inputs_and_labels()
    bounds = curvature_bounds(model, x, y)
    explicit = explicit_quantities(model, x, y)
    for i, (loss, gradient, hessian) in enumerate(explicit):
        for name, value in reference_bounds(loss, gradient, hessian, 4).items():
            got = float(getattr(bounds, name)[i])
            assert got == pytest.approx(value, rel=1e-7, abs=1e-12), (i, name)
    assert bool((bounds.lower <= bounds.upper).all())
    confident = bounds.loss < math.log(2)
    assert int(confident.sum()) >= 3  # enough samples with a non-trivial lower bound
    assert bool((bounds.lower[confident] > 0).all())
    assert bool(torch.isfinite(bounds.upper).all())
    # the misclassified sample is already past both levels
    assert float(bounds.loss[-1]) > math.log(4)
    assert float(bounds.lower[-1]) == 0.0 and float(bounds.upper[-1]) == 0.0


def trust_region_maximum(gradient, hessian, radius):
    """max gᵀr + ½ rᵀHr over ||r|| = radius, for λ_max(H) > 0 (bisection on the multiplier)."""
    values, vectors = torch.linalg.eigh(hessian)
    coefficients = vectors.T @ gradient
    top = float(values[-1])
    assert top > 0 and abs(float(coefficients[-1])) > 1e-8  # not the hard case

    def norm(mu):
        return float((coefficients / (mu - values)).norm())

    low, high = top + 1e-14, top + float(gradient.norm()) / radius
    assert norm(low) > radius >= norm(high)
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if norm(middle) > radius else (low, middle)
    r = vectors @ (coefficients / (high - values))
    return float(gradient @ r + 0.5 * r @ hessian @ r)


def test_lower_bound_is_a_true_bound_and_upper_is_reached_in_the_quadratic_model():
    model, x, y = inputs_and_labels()
    bounds = curvature_bounds(model, x, y)
    explicit = explicit_quantities(model, x, y)
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for i, (loss, gradient, hessian) in enumerate(explicit):
        if float(bounds.lower[i]) <= 0:
            continue
        checked += 1
        radius = 0.999 * float(bounds.lower[i])
        directions = torch.randn(2000, gradient.numel(), generator=generator, dtype=torch.float64)
        vectors = torch.linalg.eigh(hessian).eigenvectors
        directions = torch.cat([directions, gradient[None], vectors.T, -vectors.T])
        r = radius * directions / directions.norm(dim=1, keepdim=True)
        model_loss = loss + r @ gradient + 0.5 * ((r @ hessian) * r).sum(1)
        assert float(model_loss.max()) < math.log(2)
        # the worst direction of all: the trust-region maximum stays below log 2 as well
        assert loss + trust_region_maximum(gradient, hessian, radius) < math.log(2)
        # the upper bound's step reaches log C along the gradient or the top eigenvector
        upper = float(bounds.upper[i])
        top_vector = vectors[:, -1] * torch.sign(gradient @ vectors[:, -1])
        candidates = torch.stack([gradient / gradient.norm(), top_vector]) * upper
        reached = loss + candidates @ gradient + 0.5 * ((candidates @ hessian) * candidates).sum(1)
        assert float(reached.max()) == pytest.approx(math.log(4), abs=1e-9)
    assert checked >= 3


def test_steps_argument():
    model, x, y = inputs_and_labels()
    with pytest.raises(InvalidArgumentError, match=r"steps must be at most n = 6, got 7"):
        curvature_bounds(model, x, y, steps=7)
    with pytest.raises(InvalidArgumentError, match=r"class indices < 4"):
        curvature_bounds(model, x, torch.full_like(y, 4))
    # a seed makes the Lanczos start, and so the result, reproducible
    first = curvature_bounds(model, x, y, steps=3, seed=1)
    second = curvature_bounds(model, x, y, steps=3, seed=1)
    assert torch.equal(first.lower, second.lower) and torch.equal(first.upper, second.upper)
