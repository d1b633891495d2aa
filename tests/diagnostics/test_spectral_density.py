"""Stochastic Lanczos quadrature against matrices and Hessians whose spectra are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.diagnostics import (
    SpectralDensity,
    input_hessian_spectrum,
    stochastic_lanczos_quadrature,
)
from vulnscope.errors import InvalidArgumentError


def with_spectrum(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """``Q diag(λ) Qᵀ`` per row of ``eigenvalues`` (N, n)."""
    generator = torch.Generator().manual_seed(seed)
    batch, n = eigenvalues.shape
    q = torch.linalg.qr(torch.randn(batch, n, n, generator=generator, dtype=torch.float64)).Q
    return q @ torch.diag_embed(eigenvalues.double()) @ q.transpose(1, 2)


class Recording:
    """The operator of a batch of matrices that remembers every vector it is applied to."""

    def __init__(self, matrices: torch.Tensor):
        self.matrices = matrices
        self.calls: list[torch.Tensor] = []

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls.append(v.clone())
        return torch.einsum("bij,bj->bi", self.matrices, v)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("steps", "degree"), [(10, 6), (2, 3), (3, 5), (1, 1)])
def test_each_probe_is_gauss_quadrature_of_its_spectral_measure(steps, degree):
    """m nodes integrate polynomials of degree <= 2m - 1 exactly: Σ τ θ^p = qᵀ A^p q."""
    eigenvalues = torch.randn(2, 10, generator=generator(0), dtype=torch.float64)
    matrices = with_spectrum(eigenvalues, seed=1)
    operator = Recording(matrices)
    density = stochastic_lanczos_quadrature(
        operator, (2, 10), steps=steps, probes=3, generator=generator(2)
    )
    assert density.nodes.shape == (2, 3, steps) and density.weights.shape == (2, 3, steps)
    assert density.dimension == 10
    for probe in range(3):
        start = operator.calls[probe * steps]  # the unit start vector of this probe
        # a Rademacher probe, normalised
        assert torch.allclose((start * math.sqrt(10)).abs(), torch.ones(2, 10).double())
        power = start
        for p in range(1, degree + 1):
            power = torch.einsum("bij,bj->bi", matrices, power)
            moment = (start * power).sum(1)
            quadrature = (density.weights[:, probe] * density.nodes[:, probe] ** p).sum(1)
            assert torch.allclose(quadrature, moment, atol=1e-10), p
    assert torch.allclose(density.weights.sum(2), torch.ones(2, 3, dtype=torch.float64))


def test_density_integrates_to_one_and_is_the_gaussian_mixture_of_the_nodes():
    eigenvalues = torch.linspace(-2.0, 3.0, 12, dtype=torch.float64)[None].repeat(2, 1)
    eigenvalues[1] *= 4
    density = stochastic_lanczos_quadrature(
        Recording(with_spectrum(eigenvalues, seed=3)),
        (2, 12),
        steps=6,
        probes=4,
        generator=generator(4),
    )
    grid = torch.linspace(-20.0, 20.0, 8001, dtype=torch.float64)
    for width in (None, 0.3):
        values = density.density(grid, width=width)
        assert values.shape == (2, 8001) and bool((values >= 0).all())
        assert torch.allclose(torch.trapezoid(values, grid), torch.ones(2).double(), atol=1e-6)
    # by hand: one sample, one probe, two nodes
    hand = SpectralDensity(
        torch.tensor([[[0.0, 1.0]]], dtype=torch.float64),
        torch.tensor([[[0.25, 0.75]]], dtype=torch.float64),
        2,
    )
    points = torch.tensor([-0.5, 0.0, 0.4, 1.0, 2.0, 0.995], dtype=torch.float64)
    for width, expected_width in ((0.5, 0.5), (None, 0.01)):  # default: 1% of the nodes' span
        expected = 0.25 * gaussian(points, 0.0, expected_width)
        expected += 0.75 * gaussian(points, 1.0, expected_width)
        assert torch.allclose(hand.density(points, width=width)[0], expected, atol=1e-12)
    with pytest.raises(InvalidArgumentError, match=r"width must be > 0.0, got 0.0"):
        hand.density(points, width=0.0)


def gaussian(t: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((t - centre) / width) ** 2) / (width * math.sqrt(2 * math.pi))


def test_profile_by_hand():
    hand = SpectralDensity(
        torch.tensor([[[1.0, 3.0], [1.0, 3.0]]], dtype=torch.float64),
        torch.tensor([[[0.5, 0.5], [0.875, 0.125]]], dtype=torch.float64),
        4,
    )
    # mass 5/16 at 3 is 1.25 of 4 eigenvalues: rank 0.5 -> 3; ranks 1.5, 2.5, 3.5 -> 1
    assert torch.equal(hand.profile(), torch.tensor([[3.0, 1.0, 1.0, 1.0]], dtype=torch.float64))
    hand = SpectralDensity(
        torch.tensor([[[1.0, 3.0]]], dtype=torch.float64),
        torch.tensor([[[0.5, 0.5]]], dtype=torch.float64),
        4,
    )
    assert torch.equal(hand.profile(), torch.tensor([[3.0, 3.0, 1.0, 1.0]], dtype=torch.float64))


def test_profile_counts_the_multiplicities_of_two_eigenvalues():
    eigenvalues = torch.tensor([[-1.0] * 6 + [2.0] * 14, [0.5] * 15 + [3.0] * 5]).double()
    # two distinct eigenvalues: the Krylov space breaks down after 2 steps, and the
    # restarted third step adds a node of zero weight
    density = stochastic_lanczos_quadrature(
        Recording(with_spectrum(eigenvalues, seed=5)),
        (2, 20),
        steps=3,
        probes=200,
        generator=generator(6),
    )
    assert bool((density.weights.min(2).values < 1e-20).all())
    profile = density.profile()
    assert profile.shape == (2, 20)
    assert bool((profile.diff(dim=1) <= 0).all())  # descending
    top, bottom = (2.0, 3.0), (-1.0, 0.5)
    for sample, expected_top in enumerate((14, 5)):
        row = profile[sample]
        at_top = (row - top[sample]).abs() < 1e-8
        at_bottom = (row - bottom[sample]).abs() < 1e-8
        assert bool((at_top | at_bottom).all())
        # the estimated mass of each eigenvalue has a standard error of ~0.2 eigenvalues here
        assert abs(int(at_top.sum()) - expected_top) <= 1


def test_profile_follows_the_sorted_spectrum():
    eigenvalues = (torch.linspace(-1.0, 1.0, 16, dtype=torch.float64) ** 3)[None]
    density = stochastic_lanczos_quadrature(
        Recording(with_spectrum(eigenvalues, seed=7)),
        (1, 16),
        steps=16,
        probes=60,
        generator=generator(8),
    )
    profile = density.profile()[0]
    exact = eigenvalues[0].sort(descending=True).values
    # with m = n the nodes are eigenvalues, so each entry is one; its rank is off by a little
    rank = (profile[:, None] - exact[None, :]).abs().argmin(1)
    assert float((profile - exact[rank]).abs().max()) < 1e-8
    offset = (rank - torch.arange(16)).abs()
    assert int(offset.max()) <= 2
    assert float((profile - exact).abs().max()) < 0.2  # the shape of the curve


def hessians(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    matrices = []
    for i in range(x.shape[0]):

        def loss(sample, i=i):
            return nn.functional.cross_entropy(model(sample[None]), y[i : i + 1])

        matrices.append(torch.autograd.functional.hessian(loss, x[i]).reshape(12, 12))
    return torch.stack(matrices)


def test_input_hessian_spectrum_moments_match_the_explicit_hessian():
    model = tiny_classifier(0, (3, 4), 4, hidden=16)
    x = random_inputs(1, 3, (3, 4), (-2.0, 2.0))
    y = torch.tensor([0, 1, 3])
    probes = 60
    density = input_hessian_spectrum(model, x, y, steps=5, probes=probes, seed=0)
    assert density.nodes.shape == (3, probes, 5) and density.dimension == 12
    assert torch.allclose(density.weights.sum(2), torch.ones(3, probes, dtype=torch.float64))
    hessian = hessians(model, x, y)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    # interlacing: Ritz values never leave [λ_min, λ_max]
    assert bool((density.nodes >= eigenvalues[:, :1, None] - 1e-10).all())
    assert bool((density.nodes <= eigenvalues[:, -1:, None] + 1e-10).all())

    def off_diagonal_squared(matrix):
        diagonal = torch.diag_embed(torch.diagonal(matrix, dim1=1, dim2=2))
        return ((matrix - diagonal) ** 2).sum((1, 2))

    # each probe's first moment is zᵀHz / n exactly, so their mean is Hutchinson's trace / n,
    # whose standard error for Rademacher probes is sqrt(2 Σ_{i≠j} H_ij² / P) / n
    first = (density.weights * density.nodes).sum(2).mean(1)
    trace = torch.diagonal(hessian, dim1=1, dim2=2).sum(1)
    stderr = torch.sqrt(2 * off_diagonal_squared(hessian) / probes) / 12
    assert bool(((first - trace / 12).abs() <= 3 * stderr).all())
    # the second moment likewise estimates ||H||_F² / n
    second = (density.weights * density.nodes**2).sum(2).mean(1)
    squared = hessian @ hessian
    stderr = torch.sqrt(2 * off_diagonal_squared(squared) / probes) / 12
    frobenius = torch.diagonal(squared, dim1=1, dim2=2).sum(1)
    assert bool(((second - frobenius / 12).abs() <= 3 * stderr).all())


def test_input_hessian_spectrum_seed_and_arguments():
    model = tiny_classifier(2, (5,), 3)
    x, y = random_inputs(3, 2, (5,), (-1.0, 1.0)), torch.tensor([0, 2])
    first = input_hessian_spectrum(model, x, y, steps=3, probes=2, seed=4)
    second = input_hessian_spectrum(model, x, y, steps=3, probes=2, seed=4)
    assert torch.equal(first.nodes, second.nodes) and torch.equal(first.weights, second.weights)
    other = input_hessian_spectrum(model, x, y, steps=3, probes=2, seed=5)
    assert not torch.equal(first.weights, other.weights)
    with pytest.raises(InvalidArgumentError, match=r"steps must be at most n = 5, got 6"):
        input_hessian_spectrum(model, x, y, steps=6)
    with pytest.raises(InvalidArgumentError, match=r"steps must be an integer >= 1, got 0"):
        input_hessian_spectrum(model, x, y, steps=0)
    with pytest.raises(InvalidArgumentError, match=r"probes must be an integer >= 1, got 0"):
        input_hessian_spectrum(model, x, y, steps=2, probes=0)
    with pytest.raises(InvalidArgumentError, match=r"class indices < 3"):
        input_hessian_spectrum(model, x, torch.tensor([0, 3]), steps=2)
