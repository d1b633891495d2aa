"""Batched Lanczos against symmetric matrices built with a known spectrum."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vulnscope.diagnostics import lanczos, ritz_pairs
from vulnscope.errors import InvalidArgumentError, InvalidTypeError


def with_spectrum(eigenvalues: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q diag(λ) Qᵀ`` per row of ``eigenvalues`` (N, n), Q a random orthogonal matrix."""
    generator = torch.Generator().manual_seed(seed)
    batch, n = eigenvalues.shape
    gaussian = torch.randn(batch, n, n, generator=generator, dtype=torch.float64)
    q = torch.linalg.qr(gaussian).Q
    return q @ torch.diag_embed(eigenvalues.double()) @ q.transpose(1, 2), q


def operator_of(matrices: torch.Tensor):
    return lambda v: torch.einsum("bij,bj->bi", matrices, v)


def starts(batch: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, generator=generator, dtype=torch.float64)


def true_residuals(matrices: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor):
    """``||A y - θ y||`` for every Ritz pair, from the matrix itself."""
    image = torch.einsum("bij,bkj->bki", matrices, vectors)
    return (image - values[..., None] * vectors).norm(dim=2)


def test_full_steps_give_the_spectrum_of_a_different_matrix_per_sample():
    eigenvalues = torch.stack(
        [
            torch.linspace(-3.0, 5.0, 12),
            torch.logspace(-4, 2, 12),
            torch.tensor([-7.0, -7.0, -1.0, 0.0, 0.0, 0.0, 0.5, 2.0, 2.0, 2.0, 9.0, 11.0]),
        ]
    ).double()
    matrices, _ = with_spectrum(eigenvalues, seed=0)
    krylov = lanczos(operator_of(matrices), starts(3, 12, seed=1), 12)
    pairs = ritz_pairs(krylov)
    assert pairs.values.shape == (3, 12) and pairs.vectors.shape == (3, 12, 12)
    assert torch.allclose(pairs.values, eigenvalues.sort(dim=1).values, rtol=0, atol=1e-10)
    # each Ritz pair is an eigenpair of its own sample's matrix, not of another's
    assert float(true_residuals(matrices, pairs.values, pairs.vectors).max()) < 1e-9


def test_basis_is_orthonormal_and_tridiagonal_is_the_projection():
    eigenvalues = torch.randn(2, 30, generator=torch.Generator().manual_seed(2)).double()
    matrices, _ = with_spectrum(eigenvalues, seed=3)
    krylov = lanczos(operator_of(matrices), starts(2, 30, seed=4), 17)
    basis = krylov.basis
    assert basis.shape == (2, 17, 30) and basis.dtype == torch.float64
    gram = basis @ basis.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(17, dtype=torch.float64).expand(2, -1, -1), atol=1e-12)
    projection = basis @ matrices @ basis.transpose(1, 2)
    assert torch.allclose(krylov.tridiagonal(), projection, atol=1e-10)
    # the first basis vector is the normalised start
    start = starts(2, 30, seed=4)
    assert torch.allclose(basis[:, 0], start / start.norm(dim=1, keepdim=True), atol=1e-14)


def test_few_steps_converge_to_the_extremes_and_report_true_residuals():
    bulk = torch.linspace(0.0, 1.0, 58, dtype=torch.float64)
    eigenvalues = torch.cat([torch.tensor([-2.0, 3.0], dtype=torch.float64), bulk])[None]
    matrices, _ = with_spectrum(eigenvalues, seed=5)
    pairs = ritz_pairs(lanczos(operator_of(matrices), starts(1, 60, seed=6), 25))
    assert abs(float(pairs.values[0, -1]) - 3.0) < 1e-8
    assert abs(float(pairs.values[0, 0]) + 2.0) < 1e-8
    assert float(pairs.residuals[0, -1]) < 1e-6 and float(pairs.residuals[0, 0]) < 1e-6
    # not everything converged in 25 of 60 steps: the residuals are informative
    assert float(pairs.residuals.max()) > 1e-3
    actual = true_residuals(matrices, pairs.values, pairs.vectors)
    assert torch.allclose(pairs.residuals, actual, rtol=1e-6, atol=1e-10)
    # the residual bound: every Ritz value lies within its residual of an eigenvalue
    distance = (pairs.values[0, :, None] - eigenvalues[0, None, :]).abs().min(dim=1).values
    assert bool((distance <= pairs.residuals[0] + 1e-10).all())


def test_quadrature_weights_are_the_start_vectors_spectral_measure():
    eigenvalues = torch.tensor([[-1.0, 0.5, 2.0, 3.0, 4.5, 8.0]], dtype=torch.float64)
    matrices, q = with_spectrum(eigenvalues, seed=7)
    start = starts(1, 6, seed=8)
    pairs = ritz_pairs(lanczos(operator_of(matrices), start, 6))
    unit = start / start.norm()
    expected = (unit[0] @ q[0]) ** 2  # (v·u_i)² in ascending eigenvalue order
    assert torch.allclose(pairs.weights[0], expected, atol=1e-12)
    assert abs(float(pairs.weights.sum()) - 1.0) < 1e-12
    # with fewer steps the weights still sum to one
    few = ritz_pairs(lanczos(operator_of(matrices), start, 3))
    assert abs(float(few.weights.sum()) - 1.0) < 1e-12


def test_low_rank_operator_breaks_down_and_still_gives_the_spectrum():
    eigenvalues = torch.tensor([[4.0, -2.0, 1.0] + [0.0] * 9], dtype=torch.float64)
    matrices, _ = with_spectrum(eigenvalues, seed=9)
    generator = torch.Generator().manual_seed(0)
    krylov = lanczos(operator_of(matrices), starts(1, 12, seed=10), 12, generator=generator)
    # the Krylov space of a rank-3 operator is exhausted after at most 4 steps
    assert float(krylov.betas[0, 3:].abs().max()) == 0.0
    pairs = ritz_pairs(krylov)
    assert torch.allclose(pairs.values, eigenvalues.sort(dim=1).values, atol=1e-10)
    gram = krylov.basis[0] @ krylov.basis[0].T
    assert torch.allclose(gram, torch.eye(12, dtype=torch.float64), atol=1e-12)


def test_start_in_an_invariant_subspace_and_zero_start_still_span_everything():
    eigenvalues = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]] * 2, dtype=torch.float64)
    matrices, q = with_spectrum(eigenvalues, seed=11)
    start = torch.stack([q[0, :, 2], torch.zeros(5, dtype=torch.float64)])  # eigenvector; zero
    generator = torch.Generator().manual_seed(1)
    krylov = lanczos(operator_of(matrices), start, 5, generator=generator)
    assert float(krylov.betas[0, 0]) == 0.0  # immediate breakdown from an eigenvector
    assert torch.allclose(ritz_pairs(krylov).values, eigenvalues, atol=1e-10)
    assert bool(torch.isfinite(krylov.basis).all())


def test_same_generator_same_restarts():
    eigenvalues = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    matrices, _ = with_spectrum(eigenvalues, seed=12)
    runs = [
        lanczos(
            operator_of(matrices),
            starts(1, 6, 13),
            6,
            generator=torch.Generator().manual_seed(5),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].basis, runs[1].basis)


def test_invalid_arguments():
    identity = operator_of(torch.eye(4, dtype=torch.float64)[None])
    with pytest.raises(InvalidArgumentError, match=r"at most the dimension n = 4, got 5"):
        lanczos(identity, torch.ones(1, 4), 5)
    with pytest.raises(InvalidArgumentError, match=r"start must have shape \(N, n\), got \(4,\)"):
        lanczos(identity, torch.ones(4), 2)
    with pytest.raises(InvalidArgumentError, match=r"start must have shape \(N, n\)"):
        lanczos(identity, torch.ones(1, 2, 2), 2)
    with pytest.raises(InvalidArgumentError, match=r"steps must be an integer >= 1, got 0"):
        lanczos(identity, torch.ones(1, 4), 0)
    with pytest.raises(InvalidTypeError, match=r"steps must be an integer"):
        lanczos(identity, torch.ones(1, 4), 2.0)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 9),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    repeat=st.booleans(),
)
def test_property_full_steps_are_exact(n, batch, seed, repeat):
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = 10 * torch.randn(batch, n, generator=generator, dtype=torch.float64)
    if repeat:  # repeated eigenvalues need the restarts after breakdown
        eigenvalues = eigenvalues.round()
        eigenvalues[:, : n // 2] = eigenvalues[:, :1]
    matrices, _ = with_spectrum(eigenvalues, seed=seed + 1)
    krylov = lanczos(operator_of(matrices), starts(batch, n, seed + 2), n, generator=generator)
    pairs = ritz_pairs(krylov)
    scale = max(1.0, float(eigenvalues.abs().max()))
    assert torch.allclose(pairs.values, eigenvalues.sort(dim=1).values, atol=1e-9 * scale)
    gram = krylov.basis @ krylov.basis.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(n, dtype=torch.float64).expand(batch, -1, -1), atol=1e-10)
    assert torch.allclose(pairs.weights.sum(1), torch.ones(batch, dtype=torch.float64), atol=1e-12)
