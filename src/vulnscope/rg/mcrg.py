"""The stability matrix of a blocking transformation by Monte Carlo RG (Swendsen 1979).

For a coupling-independent blocking (an RBM layer, a majority rule on a spin lattice...)
with fine operators ``O^(k-1)`` and coarse operators ``O^(k)`` measured on the same joint
samples, the chain rule applied to ``∂<O_γ^(k)>/∂g_β^(k-1)`` gives

    A · T = B,   A = Cov(O^(k), O^(k)),   B = Cov(O^(k), O^(k-1)),   T = ∂g^(k)/∂g^(k-1)

(RG.md section 3; Kenway 2018, eq. 6). Nothing here knows where the samples came from.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_int, check_real, describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, SingularMatrixError

__all__ = ["Spectrum", "StabilityMatrix", "jackknife_error", "stability_matrix"]

MAX_CONDITION = 1e10
"""Largest condition number of A that :func:`stability_matrix` solves without ridge."""


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues or singular values, sorted by magnitude (largest first).

    Attributes:
        values: (M,) complex eigenvalues or real singular values.
        stderr: (M,) jackknife standard error of ``|values|`` (rank by rank), or None.

    """

    values: Tensor
    stderr: Tensor | None

    @property
    def magnitudes(self) -> Tensor:
        """``|values|`` (M,)."""
        return self.values.abs()

    def relevant(self, *, sigmas: float = 1.0) -> Tensor:
        """Which values exceed one beyond error: ``|λ| - sigmas · stderr > 1``. (M,) bool."""
        sigmas = check_real(sigmas, "sigmas", minimum=0.0)
        error = self.stderr if self.stderr is not None else torch.zeros_like(self.magnitudes)
        return self.magnitudes - sigmas * error > 1.0


@dataclass(frozen=True)
class StabilityMatrix:
    """The estimate of ``T = ∂g_coarse / ∂g_fine`` and its uncertainty.

    Attributes:
        T: (Mc, Mf) the stability matrix, float64.
        stderr: (Mc, Mf) jackknife standard error over blocks of samples; None when weighted.
        condition_number: 2-norm condition number of A (after any ridge).
        num_samples: S.
        coarse_covariance: (Mc, Mc) A.
        replicas: (K, Mc, Mf) leave-one-block-out estimates of T, or None when weighted.
        covariance_replicas: (K, Mc, Mc) leave-one-block-out estimates of A, or None.

    """

    T: Tensor
    stderr: Tensor | None
    condition_number: float
    num_samples: int
    coarse_covariance: Tensor
    replicas: Tensor | None
    covariance_replicas: Tensor | None

    def eigenvalues(self) -> Spectrum:
        """Eigenvalues of a square T by a general (non-symmetric) eigensolver."""
        rows, cols = self.T.shape
        if rows != cols:
            raise InvalidArgumentError(
                f"T is ({rows}, {cols}), not square: use singular_values() for a rectangular T"
            )
        return _spectrum(self.T, self.replicas, torch.linalg.eigvals)

    def singular_values(self) -> Spectrum:
        """Singular values of T, square or rectangular."""
        return _spectrum(self.T, self.replicas, torch.linalg.svdvals)

    def relevant(self, *, sigmas: float = 1.0) -> Tensor:
        """Which eigenvalues are relevant: ``|λ| - sigmas · stderr > 1``. (M,) bool."""
        return self.eigenvalues().relevant(sigmas=sigmas)


def _spectrum(T: Tensor, replicas: Tensor | None, solver: object) -> Spectrum:
    values = solver(T)  # type: ignore[operator]
    order = values.abs().argsort(descending=True)
    values = values[order]
    if replicas is None:
        return Spectrum(values, None)
    magnitudes = solver(replicas).abs().sort(-1, descending=True).values  # type: ignore[operator]
    return Spectrum(values, jackknife_error(magnitudes))


def jackknife_error(replicas: Tensor) -> Tensor:
    """Jackknife standard error from leave-one-block-out replicas: (B, ...) -> (...).

    ``sqrt((B - 1) / B · Σ_b (r_b - r̄)²)`` over the first axis (the jackknife of
    Quenouille 1956 and Tukey 1958), for any statistic computed once per replica: an
    eigenvalue, a matrix entry, a norm.
    """
    count = replicas.shape[0]
    spread = (replicas - replicas.mean(0)).pow(2).sum(0)
    return (spread * (count - 1) / count).sqrt()


def _check_operator_values(value: object, name: str) -> tuple[Tensor, Tensor]:
    """The checked (S, M) values and their column sums (M,), which the caller reuses."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise InvalidTypeError(f"{name} must be a floating torch.Tensor, got {describe(value)}")
    if value.ndim != 2 or value.shape[0] < 2 or value.shape[1] < 1:
        raise InvalidArgumentError(
            f"{name} must have shape (S, M) with S >= 2 samples and M >= 1 operators, "
            f"got {tuple(value.shape)}"
        )
    # A NaN or an infinity anywhere makes its column's sum non-finite, so the sums (needed
    # for the means anyway) clear finite data; a full isfinite count over S x M values
    # costs as much as the covariance products themselves.
    sums = value.sum(0)
    if not bool(torch.isfinite(sums.detach()).all()):
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise InvalidArgumentError(f"{name} must be finite, got {bad} NaN or infinite values")
    return value, sums


def _check_weights(weights: object, samples: int) -> Tensor:
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        raise InvalidTypeError(f"weights must be a floating torch.Tensor, got {describe(weights)}")
    if weights.shape != (samples,):
        raise InvalidArgumentError(
            f"weights must have shape ({samples},), one probability per sample, "
            f"got {tuple(weights.shape)}"
        )
    weights = weights.detach()
    if not bool(torch.isfinite(weights).all()) or float(weights.min()) < 0:
        raise InvalidArgumentError(
            f"weights must be probabilities >= 0, got minimum {float(weights.min()):.3g}"
        )
    total = float(weights.double().sum())
    tolerance = 1e-9 if weights.dtype == torch.float64 else 1e-4
    if abs(total - 1.0) > tolerance:
        raise InvalidArgumentError(f"weights must sum to one, got sum {total:.9g}")
    return weights


def stability_matrix(
    coarse_ops: Tensor,
    fine_ops: Tensor,
    weights: Tensor | None = None,
    *,
    blocks: int = 20,
    ridge: float = 0.0,
    max_condition: float = MAX_CONDITION,
) -> StabilityMatrix:
    """Estimate the stability matrix of a blocking from joint operator values.

    Solves ``A T = B`` by a Cholesky factorisation of A (never an explicit inverse), in
    float64. The standard error is a jackknife over ``blocks`` contiguous blocks of
    samples: with independent chains any blocking is valid; with samples from one Markov
    chain in time order, blocks longer than its autocorrelation time make the error honest
    (binning). Each leave-one-block-out estimate reuses per-block sums, so the error costs
    only ``blocks`` small solves beyond the two covariance products.

    Args:
        coarse_ops: (S, Mc) coarse-level operator values on S joint samples.
        fine_ops: (S, Mf) fine-level operator values on the same samples.
        weights: (S,) probabilities of the samples (for exact expectations over an
            enumeration of states); None for equally weighted Monte Carlo samples.
        blocks: jackknife blocks (at most S).
        ridge: adds ``ridge · mean(diag A)`` to A's diagonal; use only when A is singular.
        max_condition: largest condition number of A accepted.

    Returns:
        :class:`StabilityMatrix`.

    Raises:
        SingularMatrixError: A is singular or its condition number exceeds
            ``max_condition`` (the message gives it and names constant operators).

    Example:
        >>> fine = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
        >>> coarse = fine @ torch.tensor([[2.0, 0.0], [1.0, 1.0]]).T
        >>> stability_matrix(coarse, fine).T.round(decimals=6).tolist()
        [[0.5, -0.5], [0.0, 1.0]]

    """
    coarse, coarse_sums = _check_operator_values(coarse_ops, "coarse_ops")
    fine, fine_sums = _check_operator_values(fine_ops, "fine_ops")
    if coarse.shape[0] != fine.shape[0]:
        raise InvalidArgumentError(
            f"coarse_ops has {coarse.shape[0]} samples (rows) but fine_ops has "
            f"{fine.shape[0]}: both must hold operator values on the same joint samples"
        )
    samples = coarse.shape[0]
    ridge = check_real(ridge, "ridge", minimum=0.0)
    max_condition = check_real(max_condition, "max_condition", minimum=1.0)
    if weights is not None:
        w = _check_weights(weights, samples).detach().to(coarse.dtype)
        coarse_c = coarse - w @ coarse
        fine_c = fine - (w.to(fine.dtype) @ fine)
        weighted = coarse_c * w[:, None]
        A = (weighted.t() @ coarse_c).double()
        B = (weighted.t() @ fine_c.to(coarse.dtype)).double()
        A = _regularise(A, ridge)
        condition = _check_condition(A, max_condition)
        T = _solve(A, B)
        return StabilityMatrix(T, None, condition, samples, A, None, None)

    count = min(check_int(blocks, "blocks", minimum=2), samples)
    coarse_c = coarse - coarse_sums / samples  # the means, as coarse.mean(0) computes them
    fine_c = fine - fine_sums / samples
    edges = torch.linspace(0, samples, count + 1).round().long().tolist()
    sizes = torch.tensor([hi - lo for lo, hi in itertools.pairwise(edges)], dtype=torch.float64)
    AA = torch.empty(count, coarse.shape[1], coarse.shape[1], dtype=torch.float64)
    AB = torch.empty(count, coarse.shape[1], fine.shape[1], dtype=torch.float64)
    sum_c = torch.empty(count, coarse.shape[1], dtype=torch.float64)
    sum_f = torch.empty(count, fine.shape[1], dtype=torch.float64)
    for block, (lo, hi) in enumerate(itertools.pairwise(edges)):
        part_c, part_f = coarse_c[lo:hi], fine_c[lo:hi]
        AA[block] = part_c.t() @ part_c
        AB[block] = part_c.t() @ part_f.to(coarse.dtype)
        sum_c[block], sum_f[block] = part_c.sum(0), part_f.sum(0)

    def covariances(
        aa: Tensor, ab: Tensor, sc: Tensor, sf: Tensor, n: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = n[..., None, None]
        mc, mf = sc[..., :, None] / n, sf[..., None, :] / n
        return aa / n - mc * mc.transpose(-1, -2), ab / n - mc * mf

    A, B = covariances(AA.sum(0), AB.sum(0), sum_c.sum(0), sum_f.sum(0), sizes.sum())
    A = _regularise(A, ridge)
    condition = _check_condition(A, max_condition)
    T = _solve(A, B)
    A_loo, B_loo = covariances(
        AA.sum(0) - AA,
        AB.sum(0) - AB,
        sum_c.sum(0) - sum_c,
        sum_f.sum(0) - sum_f,
        sizes.sum() - sizes,
    )
    A_loo = _regularise(A_loo, ridge)
    replicas = _solve(A_loo, B_loo)
    return StabilityMatrix(T, jackknife_error(replicas), condition, samples, A, replicas, A_loo)


def _regularise(A: Tensor, ridge: float) -> Tensor:
    if ridge == 0.0:
        return A
    scale = A.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    return A + ridge * scale * torch.eye(A.shape[-1], dtype=A.dtype)


def _check_condition(A: Tensor, max_condition: float) -> float:
    variances = A.diagonal()
    constant = (variances <= 1e-12 * max(float(variances.abs().max()), 1e-300)).nonzero().flatten()
    if constant.numel():
        shown = ", ".join(str(int(i)) for i in constant[:8]) + (
            ", ..." if constant.numel() > 8 else ""
        )
        raise SingularMatrixError(
            f"A = Cov(coarse_ops) is singular (condition number inf): coarse operator "
            f"column(s) {shown} are constant on every sample; drop them",
            math.inf,
        )
    eigenvalues = torch.linalg.eigvalsh(A)
    smallest, largest = float(eigenvalues[0]), float(eigenvalues[-1])
    condition = largest / smallest if smallest > 0 else math.inf
    if not condition <= max_condition:
        raise SingularMatrixError(
            f"A = Cov(coarse_ops) is singular or nearly so (condition number {condition:.3g} "
            f"> {max_condition:.3g}): the coarse operators are linearly dependent on these "
            f"samples; drop redundant operators, add samples, or pass ridge > 0",
            condition,
        )
    return condition


def _solve(A: Tensor, B: Tensor) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):  # indefinite by rounding: fall back to a pivoted LU solve
        solution: Tensor = torch.linalg.solve(A, B)
        return solution
    return torch.cholesky_solve(B, factor)
