"""Batched Lanczos iteration on symmetric linear operators given only as products.

Every diagnostic here (the input Fisher's ``v -> Jᵀ M J v``, the input Hessian's ``v -> H v``)
is one symmetric operator per sample, applied to a whole batch at once. Lanczos (1950)
builds an orthonormal Krylov basis ``Q`` (N, m, n) and the tridiagonal ``T = Qᵀ A Q`` (N, m, m);
the eigenpairs of ``T`` (Ritz pairs) approximate the extreme eigenpairs of ``A``, and the
first components of its eigenvectors give the quadrature weights of stochastic Lanczos
quadrature (Golub and Meurant 2010; Ubaru, Chen and Saad 2017).

The basis is kept and every new vector is re-orthogonalised against it (classical
Gram-Schmidt in float64, repeated when it cancels much), so no ghost eigenvalues appear;
the memory is m vectors per sample. When the Krylov space of a sample is exhausted (an
invariant subspace, e.g. the rank-(C-1) Fisher after C-1 steps) the iteration continues
from a random vector orthogonal to the basis with a zero off-diagonal, so ``T`` stays
block-diagonal and exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_int
from vulnscope.errors import InvalidArgumentError

__all__ = ["Krylov", "RitzPairs", "lanczos", "random_start_ritz_pairs", "ritz_pairs"]

Operator = Callable[[Tensor], Tensor]
"""A batch of symmetric operators: (N, n) float64 -> (N, n), sample by sample."""

_BREAKDOWN = 1e-10


@dataclass(frozen=True)
class Krylov:
    """The result of ``m`` Lanczos steps on N operators.

    Attributes:
        alphas: (N, m) diagonal of ``T``.
        betas: (N, m - 1) off-diagonal of ``T`` (0 where the iteration restarted).
        basis: (N, m, n) orthonormal rows ``q_1 .. q_m``.
        residual: (N,) norm of the part of ``A q_m`` outside the basis: the ``β_m`` of the
            residual bound ``||A y - θ y|| = β_m |s_m|`` of each Ritz pair.

    """

    alphas: Tensor
    betas: Tensor
    basis: Tensor
    residual: Tensor

    def tridiagonal(self) -> Tensor:
        """``T``: (N, m, m)."""
        return (
            torch.diag_embed(self.alphas)
            + torch.diag_embed(self.betas, offset=1)
            + torch.diag_embed(self.betas, offset=-1)
        )


@dataclass(frozen=True)
class RitzPairs:
    """Eigenpairs of ``T`` mapped back to the operator's space, in ascending order.

    Attributes:
        values: (N, m) Ritz values.
        vectors: (N, m, n) unit Ritz vectors.
        residuals: (N, m) bound ``||A y - θ y||`` of each pair: small means converged.
        weights: (N, m) squared first components of ``T``'s eigenvectors, the Gauss
            quadrature weights of the start vector's spectral measure (they sum to 1).

    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    weights: Tensor


def _project_out(vector: Tensor, basis: Tensor) -> Tensor:
    """One classical Gram-Schmidt pass: ``vector`` (N, n) minus its part in ``basis`` (N, j, n).

    Row-vector products ((1, n) @ (n, j) @ (j, n) per sample) run several times faster on a
    CPU than the column form of the same batched matrix-vector products.
    """
    return vector - ((vector[:, None, :] @ basis.transpose(1, 2)) @ basis)[:, 0, :]


def lanczos(
    operator: Operator,
    start: Tensor,
    steps: int,
    *,
    generator: torch.Generator | None = None,
) -> Krylov:
    """Run ``steps`` Lanczos steps from ``start`` on each sample's operator.

    Args:
        operator: (N, n) -> (N, n), symmetric per sample, applied in float64.
        start: (N, n) start vectors (normalised here; a zero row is replaced by a random one).
        steps: m, at most n.
        generator: a CPU generator, the source of the random restart vectors after a
            breakdown.

    Returns:
        :class:`Krylov` with m steps, in float64.

    """
    if start.ndim != 2:
        raise InvalidArgumentError(f"start must have shape (N, n), got {tuple(start.shape)}")
    n = start.shape[1]
    steps = check_int(steps, "steps")
    if steps > n:
        raise InvalidArgumentError(f"steps must be at most the dimension n = {n}, got {steps}")
    batch, device = start.shape[0], start.device
    basis = torch.zeros(batch, steps, n, dtype=torch.float64, device=device)
    alphas = torch.zeros(batch, steps, dtype=torch.float64, device=device)
    betas = torch.zeros(batch, steps, dtype=torch.float64, device=device)
    scale = torch.zeros(batch, dtype=torch.float64, device=device)  # a lower bound on ||A||
    vector = start.detach().double()
    empty = vector.norm(dim=1) == 0
    if bool(empty.any()):
        vector = torch.where(empty[:, None], _noise(vector, generator), vector)
    vector = vector / vector.norm(dim=1, keepdim=True)
    for step in range(steps):
        basis[:, step] = vector
        known = basis[:, : step + 1]
        image = operator(vector).double()
        alphas[:, step] = (image * vector).sum(1)
        before = image.norm(dim=1)
        image = _project_out(image, known)
        norms = image.norm(dim=1)
        scale = torch.maximum(scale, torch.maximum(alphas[:, step].abs(), norms))
        broke = norms <= _BREAKDOWN * scale
        if step + 1 < steps and bool(broke.any()):
            image = torch.where(broke[:, None], _noise(image, generator), image)
        # A second pass where the first cancelled most of the vector (Daniel, Gragg,
        # Kaufman and Stewart 1976) or where a restart vector was drawn; otherwise one pass
        # leaves it orthogonal to working precision.
        if bool((broke | (norms < 0.7071 * before)).any()):
            image = _project_out(image, known)
            norms = image.norm(dim=1)
        betas[:, step] = torch.where(broke, torch.zeros_like(norms), norms)
        vector = image / norms[:, None]
    return Krylov(alphas, betas[:, :-1], basis, betas[:, -1])


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gaussian rows shaped like ``like``, drawn on the CPU so that the generator decides."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def ritz_pairs(krylov: Krylov) -> RitzPairs:
    """Eigenpairs of the tridiagonal ``T`` and the Ritz vectors ``Q s``.

    Args:
        krylov: the output of :func:`lanczos`.

    Returns:
        :class:`RitzPairs`, values ascending.

    """
    values, vectors = torch.linalg.eigh(krylov.tridiagonal())
    ritz = torch.einsum("bmn,bmk->bkn", krylov.basis, vectors)
    ritz = ritz / ritz.norm(dim=2, keepdim=True).clamp_min(1e-300)
    residuals = (krylov.residual[:, None] * vectors[:, -1, :]).abs()
    return RitzPairs(values, ritz, residuals, vectors[:, 0, :] ** 2)


def random_start_ritz_pairs(
    operator: Operator,
    shape: tuple[int, int],
    steps: int,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> RitzPairs:
    """Ritz pairs of ``steps`` Lanczos steps from a Gaussian start vector per sample.

    Args:
        operator: (N, n) float64 -> (N, n), symmetric per sample.
        shape: ``(N, n)``.
        steps: m, at most n.
        generator: a CPU generator for the start and restart vectors.
        device: where the vectors live.

    Returns:
        :class:`RitzPairs`, values ascending.

    """
    start = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    return ritz_pairs(lanczos(operator, start, steps, generator=generator))
