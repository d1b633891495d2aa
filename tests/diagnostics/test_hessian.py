"""The input Hessian of the cross-entropy against torch.autograd.functional.hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.diagnostics import (
    HutchinsonEstimate,
    hutchinson,
    input_fisher,
    input_hessian_eigenvalues,
    input_hessian_norms,
)
from vulnscope.diagnostics.hessian import loss_curvature
from vulnscope.errors import InvalidArgumentError


def explicit_hessian(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, n, n): the Hessian of each sample's cross-entropy, by autograd.functional."""
    matrices = []
    for i in range(x.shape[0]):

        def loss(sample, i=i):
            return nn.functional.cross_entropy(model(sample[None]), y[i : i + 1])

        hessian = torch.autograd.functional.hessian(loss, x[i])
        matrices.append(hessian.reshape(x[i].numel(), x[i].numel()))
    return torch.stack(matrices)


def relu_mlp(seed: int, features: int, classes: int, hidden: int = 10) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    return model.double().eval()


def labels(seed: int, n: int, classes: int) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def by_magnitude(values: torch.Tensor) -> torch.Tensor:
    order = values.abs().argsort(dim=1, descending=True)
    return values.gather(1, order)


@pytest.mark.parametrize(("shape", "classes", "hidden"), [((1, 2, 3), 4, 8), ((10,), 3, 16)])
def test_full_steps_give_the_exact_top_eigenpairs(shape, classes, hidden):
    model = tiny_classifier(0, shape, classes, hidden=hidden)
    x, y = random_inputs(1, 4, shape, (-1.0, 1.0)), labels(2, 4, classes)
    n = math.prod(shape)
    result = input_hessian_eigenvalues(model, x, y, k=5, steps=n)
    hessian = explicit_hessian(model, x, y)
    reference = by_magnitude(torch.linalg.eigvalsh(hessian))[:, :5]
    assert result.steps == n
    assert result.eigenvalues.shape == (4, 5) and result.eigenvectors.shape == (4, 5, *shape)
    scale = float(reference.abs().max())
    assert scale > 1e-3
    assert bool((reference < 0).any())  # a tanh network's loss has negative curvature too
    # ordered by decreasing |λ|, signs kept
    assert bool((result.eigenvalues.abs().diff(dim=1) <= 1e-12).all())
    assert torch.allclose(result.eigenvalues.abs(), reference.abs(), atol=1e-8 * scale)
    assert torch.allclose(result.eigenvalues, reference, atol=1e-8 * scale)
    vectors = result.eigenvectors.flatten(2)
    assert torch.allclose(vectors.norm(dim=2), torch.ones(4, 5, dtype=torch.float64), atol=1e-12)
    image = torch.einsum("bij,bkj->bki", hessian, vectors)
    error = (image - result.eigenvalues[..., None] * vectors).norm(dim=2)
    assert float(error.max()) < 1e-7 * scale
    assert float(result.residuals.max()) < 1e-7 * scale
    # loss and gradient norm, from autograd directly
    inputs = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(inputs), y, reduction="none")
    (gradient,) = torch.autograd.grad(loss.sum(), inputs)
    assert torch.allclose(result.loss, loss.detach(), atol=1e-14)
    assert torch.allclose(result.gradient_norm, gradient.flatten(1).norm(dim=1), atol=1e-14)


def test_fewer_steps_converge_where_the_residual_says_so():
    model = tiny_classifier(3, (24,), 5, hidden=40)
    x, y = random_inputs(4, 3, (24,), (-2.0, 2.0)), labels(5, 3, 5)
    result = input_hessian_eigenvalues(model, x, y, k=3, steps=12)
    eigenvalues = torch.linalg.eigvalsh(explicit_hessian(model, x, y))
    # the Lanczos bound: every value lies within its residual of a true eigenvalue
    distance = (result.eigenvalues[..., None] - eigenvalues[:, None, :]).abs().min(2).values
    assert bool((distance <= result.residuals + 1e-10).all())
    assert float(result.residuals.max()) > 1e-6  # not already exact: a real test of the bound
    # the largest-magnitude one converged in half the dimension
    top = by_magnitude(eigenvalues)[:, 0]
    scale = float(top.abs().max())
    assert float(result.residuals[:, 0].max()) < 1e-3 * scale
    assert torch.allclose(result.eigenvalues[:, 0], top, atol=1e-4 * scale)


def test_relu_network_hessian_is_the_input_fisher():
    model = relu_mlp(6, 8, 4)
    x = random_inputs(7, 5, (8,), (-1.0, 1.0))
    y = labels(8, 5, 4)
    hessian = explicit_hessian(model, x, y)
    # Gauss-Newton: piecewise linear in x, so H = Jᵀ (diag p - p pᵀ) J, whatever the label
    assert torch.allclose(hessian, explicit_hessian(model, x, (y + 1) % 4), atol=1e-12)
    fisher = input_fisher(model, x, k=3)
    result = input_hessian_eigenvalues(model, x, y, k=3, steps=8)
    scale = float(fisher.eigenvalues.max())
    assert torch.allclose(result.eigenvalues, fisher.eigenvalues, atol=1e-9 * scale)
    assert torch.allclose(
        torch.linalg.eigvalsh(hessian).flip(1)[:, :3], fisher.eigenvalues, atol=1e-9 * scale
    )
    # the same directions, where they are defined (a dead ReLU can drop the rank below C - 1)
    cosines = (result.eigenvectors * fisher.eigenvectors).sum(2).abs()
    defined = fisher.eigenvalues > 1e-6 * scale
    assert int(defined.sum()) >= 13
    assert torch.allclose(cosines[defined], torch.ones_like(cosines[defined]), atol=1e-6)


def test_hutchinson_norms_are_within_three_standard_errors_of_the_exact_ones():
    model = tiny_classifier(9, (12,), 4, hidden=16)
    x, y = random_inputs(10, 3, (12,), (-2.0, 2.0)), labels(11, 3, 4)
    probes = 200
    estimate = input_hessian_norms(model, x, y, probes=probes, seed=0)
    hessian = explicit_hessian(model, x, y)
    trace = torch.diagonal(hessian, dim1=1, dim2=2).sum(1)
    frobenius_squared = (hessian**2).sum((1, 2))
    assert estimate.probes == probes
    assert bool(((estimate.trace - trace).abs() <= 3 * estimate.trace_stderr).all())
    error = (estimate.frobenius_squared - frobenius_squared).abs()
    assert bool((error <= 3 * estimate.frobenius_squared_stderr).all())
    # the standard errors themselves: Rademacher probes give Var(zᵀHz) = 2 Σ_{i≠j} H_ij²
    off_diagonal = hessian - torch.diag_embed(torch.diagonal(hessian, dim1=1, dim2=2))
    expected_stderr = torch.sqrt(2 * (off_diagonal**2).sum((1, 2)) / probes)
    ratio = estimate.trace_stderr / expected_stderr
    assert bool(((ratio > 0.75) & (ratio < 1.25)).all())
    assert torch.allclose(estimate.frobenius, frobenius_squared.sqrt(), rtol=0.1)


def test_hutchinson_is_exact_on_a_diagonal_operator():
    diagonal = torch.tensor([[1.0, -2.0, 3.5, 0.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    estimate = hutchinson(
        lambda v: diagonal * v, (2, 4), probes=5, generator=torch.Generator().manual_seed(0)
    )
    # zᵀ D z = tr D and ||D z||² = ||D||_F² for every sign vector z
    assert torch.allclose(estimate.trace, diagonal.sum(1), atol=1e-14)
    assert torch.allclose(estimate.frobenius_squared, (diagonal**2).sum(1), atol=1e-14)
    assert float(estimate.trace_stderr.abs().max()) < 1e-14
    assert float(estimate.frobenius_squared_stderr.abs().max()) < 1e-14


def test_frobenius_properties():
    estimate = HutchinsonEstimate(
        trace=torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64),
        trace_stderr=torch.tensor([0.1, 0.2, 0.0], dtype=torch.float64),
        frobenius_squared=torch.tensor([9.0, 0.25, 0.0], dtype=torch.float64),
        frobenius_squared_stderr=torch.tensor([0.6, 0.1, 0.0], dtype=torch.float64),
        probes=10,
    )
    assert torch.allclose(estimate.frobenius, torch.tensor([3.0, 0.5, 0.0], dtype=torch.float64))
    # delta method: d sqrt(s) = ds / (2 sqrt(s))
    expected = torch.tensor([0.6 / 6.0, 0.1 / 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(estimate.frobenius_stderr, expected)
    # against a finite difference of the square root
    s, ds = 9.0, 1e-6
    slope = (math.sqrt(s + ds) - math.sqrt(s)) / ds
    assert abs(float(estimate.frobenius_stderr[0]) - slope * 0.6) < 1e-6


def test_same_seed_same_result():
    model = tiny_classifier(12, (20,), 3, hidden=24)
    x, y = random_inputs(13, 3, (20,), (-1.0, 1.0)), labels(14, 3, 3)
    first = input_hessian_eigenvalues(model, x, y, k=2, steps=8, seed=5)
    second = input_hessian_eigenvalues(model, x, y, k=2, steps=8, seed=5)
    assert torch.equal(first.eigenvalues, second.eigenvalues)
    assert torch.equal(first.eigenvectors, second.eigenvectors)
    norms = [input_hessian_norms(model, x, y, probes=4, seed=5) for _ in range(2)]
    assert torch.equal(norms[0].trace, norms[1].trace)
    assert torch.equal(norms[0].frobenius_squared, norms[1].frobenius_squared)
    other = input_hessian_norms(model, x, y, probes=4, seed=6)
    assert not torch.equal(norms[0].trace, other.trace)


def test_batch_size_chunks_give_the_same_exact_eigenpairs():
    model = tiny_classifier(20, (7,), 3, hidden=12)
    x, y = random_inputs(21, 5, (7,), (-1.0, 1.0)), labels(22, 5, 3)
    whole = input_hessian_eigenvalues(model, x, y, k=3, steps=7, batch_size=None)
    chunked = input_hessian_eigenvalues(model, x, y, k=3, steps=7, batch_size=2)
    scale = float(whole.eigenvalues.abs().max())
    assert torch.allclose(chunked.eigenvalues, whole.eigenvalues, atol=1e-10 * scale)
    cosines = (chunked.eigenvectors * whole.eigenvectors).sum(2).abs()
    assert torch.allclose(cosines, torch.ones_like(cosines), atol=1e-6)
    assert torch.allclose(chunked.loss, whole.loss) and torch.allclose(
        chunked.gradient_norm, whole.gradient_norm
    )


def test_float32_model_is_close_to_the_float64_hessian():
    model = tiny_classifier(23, (6,), 4)
    x, y = random_inputs(24, 3, (6,), (-1.0, 1.0)), labels(25, 3, 4)
    reference = by_magnitude(torch.linalg.eigvalsh(explicit_hessian(model, x, y)))[:, :3]
    result = input_hessian_eigenvalues(model.float(), x.float(), y, k=3, steps=6)
    assert result.eigenvalues.dtype == torch.float64
    assert result.eigenvectors.dtype == torch.float32
    scale = float(reference.abs().max())
    assert torch.allclose(result.eigenvalues, reference, atol=1e-4 * scale)


def test_loss_curvature_products_are_explicit_hessian_products():
    model = tiny_classifier(15, (6,), 3)
    x, y = random_inputs(16, 4, (6,), (-1.0, 1.0)), labels(17, 4, 3)
    curvature = loss_curvature(model, x, y)
    v = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.einsum("bij,bj->bi", explicit_hessian(model, x, y), v)
    assert torch.allclose(curvature.hvp(v), expected, atol=1e-12)
    assert curvature.gradient.shape == (4, 6) and curvature.gradient.dtype == torch.float64


def test_invalid_arguments():
    model = tiny_classifier(18, (6,), 4)
    x, y = random_inputs(19, 2, (6,), (-1.0, 1.0)), torch.tensor([0, 3])
    with pytest.raises(InvalidArgumentError, match=r"k <= steps <= n = 6.*got k=5 and steps=3"):
        input_hessian_eigenvalues(model, x, y, k=5, steps=3)
    with pytest.raises(InvalidArgumentError, match=r"k <= steps <= n = 6.*got k=2 and steps=7"):
        input_hessian_eigenvalues(model, x, y, k=2, steps=7)
    with pytest.raises(InvalidArgumentError, match=r"k <= steps <= n = 6.*got k=7"):
        input_hessian_eigenvalues(model, x, y, k=7)
    bad = torch.tensor([0, 4])
    with pytest.raises(InvalidArgumentError, match=r"class indices < 4.*got maximum 4"):
        input_hessian_eigenvalues(model, x, bad, k=1)
    with pytest.raises(InvalidArgumentError, match=r"class indices < 4"):
        input_hessian_norms(model, x, bad)
    with pytest.raises(InvalidArgumentError, match=r"probes must be an integer >= 2, got 1"):
        input_hessian_norms(model, x, y, probes=1)
