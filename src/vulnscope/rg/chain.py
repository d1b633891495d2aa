"""What the RG analyses of both passes of a deep RBM share.

The classification pass (:func:`vulnscope.rg.analyse_input`, :class:`InputRG`) and the
generation pass (:class:`vulnscope.cloning.GenerationPassFisher`,
:class:`vulnscope.cloning.GenerationRG`) both estimate a chain of stability matrices
``T^(k)`` from sampled states, level after level (Kenway 2018, eqs. 4-6 and 20-22):

- on each level, only the operators that vary on the chains take part
  (:func:`active_operators`); each ``T^(k)`` is estimated on those and placed back into
  the full operator sets (:func:`embed`);
- the spectra of the chain (:func:`chain_spectra`): the leading eigenvalue of each square
  matrix, the leading singular value of the last, rectangular one, and the relevant
  eigenvalues;
- the result (:class:`ChainRG`): those spectra, the norm of the product of the chain, its
  Jacobian and the Fisher information it gives, with jackknife errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope.rg.mcrg import StabilityMatrix
from vulnscope.rg.operators import OperatorSet

__all__ = ["ChainRG", "ChainSpectra", "active_operators", "chain_spectra", "embed"]


@dataclass(frozen=True)
class ChainSpectra:
    """The spectra of a chain of ``L`` stability matrices, the last one rectangular.

    Attributes:
        leading: (L,) float64, the leading |eigenvalue| of each square matrix and, last,
            the leading singular value of the rectangular one.
        leading_stderr: (L,) float64, their jackknife errors (0 where none is known).
        singular: (L,) float64, the leading singular value of every matrix.
        relevant: (L-1,) int64, the relevant eigenvalues (|λ| beyond one error above 1)
            of each square matrix.

    """

    leading: Tensor
    leading_stderr: Tensor
    singular: Tensor
    relevant: Tensor


def chain_spectra(layers: list[StabilityMatrix]) -> ChainSpectra:
    """Leading eigenvalues, singular values and relevant counts of a chain of ``T^(k)``.

    Args:
        layers: the chain's stability matrices in the order of the pass; every one but the
            last maps one coupling space to itself (square), the last maps into another.

    Returns:
        :class:`ChainSpectra`.

    """
    leading, leading_err, singular, relevant = [], [], [], []
    for index, layer in enumerate(layers):
        svals = layer.singular_values()
        singular.append(svals.magnitudes[0])
        square = index < len(layers) - 1
        spectrum = layer.eigenvalues() if square else svals
        leading.append(spectrum.magnitudes[0])
        leading_err.append(spectrum.stderr[0] if spectrum.stderr is not None else torch.tensor(0.0))
        if square:
            relevant.append(spectrum.relevant().sum())
    return ChainSpectra(
        leading=torch.stack(leading).double(),
        leading_stderr=torch.stack(leading_err).double(),
        singular=torch.stack(singular).double(),
        relevant=torch.stack(relevant) if relevant else torch.zeros(0, dtype=torch.long),
    )


@dataclass(frozen=True)
class ChainRG:
    """The RG analysis of one pass through a deep RBM: what both passes report.

    Attributes:
        layers: the stability matrices in the order the pass visits them; the square
            hidden-to-hidden ones first, the last (into another operator set) rectangular.
        leading, leading_stderr, singular, relevant: the chain's spectra
            (:class:`ChainSpectra`).
        product_norm: spectral norm of the product of the chain; ``product_norm_stderr``
            its jackknife error.
        jacobian: the chain rule's derivative of the last level's couplings (its shape
            depends on the pass).
        fisher_eigenvalues: (k,) top eigenvalues of the Fisher information the chain
            gives, largest first; ``fisher_stderr`` their jackknife errors.
        fisher_eigenvectors: (k, n) its unit eigenvectors as rows, in the same order.

    """

    layers: list[StabilityMatrix]
    leading: Tensor
    leading_stderr: Tensor
    singular: Tensor
    relevant: Tensor
    product_norm: float
    product_norm_stderr: float
    jacobian: Tensor
    fisher_eigenvalues: Tensor
    fisher_stderr: Tensor
    fisher_eigenvectors: Tensor

    @property
    def relative_error(self) -> float:
        """Jackknife error of the top Fisher eigenvalue over the eigenvalue."""
        top = float(self.fisher_eigenvalues[0])
        return float(self.fisher_stderr[0]) / top if top > 0 else float("inf")

    @property
    def unstable(self) -> bool:
        """Whether some square ``T^(k)`` has a relevant eigenvalue (beyond one error)."""
        return bool((self.relevant > 0).any())


def active_operators(
    values: Tensor, operators: OperatorSet, states: Tensor, minimum: int
) -> Tensor:
    """Operators that vary on the chains: (M,) bool.

    A unit that takes its minority value on fewer than ``minimum`` chains is frozen for
    this input: its coupling is effectively infinite and a small change of it changes
    nothing, so it and every product containing it drop out of the chain rule (their
    rows and columns of T are zero). Requiring ``minimum`` flips also keeps every
    jackknife replica's covariance invertible. Of the operators that vary, those that
    are linear combinations of others on these chains are dropped too.

    Args:
        values: (S, M) the operators' values on the chains' states.
        operators: the operator set that gave ``values``.
        states: (S, n) the level's binary states.
        minimum: fewest chains on which a unit or an operator must take its minority value.

    Returns:
        (M,) bool: True where the operator stays in the chain rule.

    """
    samples = states.shape[0]
    unit_on = (states > 0.5).sum(0)
    unit_ok = torch.minimum(unit_on, samples - unit_on) >= minimum
    plus = (values > 0).sum(0)
    ok = torch.minimum(plus, samples - plus) >= minimum
    units_ok = unit_ok[operators.index.clamp_max(operators.n_units - 1)]
    units_ok = units_ok | (operators.index == operators.n_units)
    active = ok & units_ok.all(1)
    chosen = active.nonzero().flatten()
    independent = _independent_columns(values[:, chosen].double())
    mask = torch.zeros_like(active)
    mask[chosen[independent]] = True
    return mask


def _independent_columns(values: Tensor, tolerance: float = 1e-6) -> Tensor:
    """Indices of a maximal set of linearly independent columns, in their original order.

    Greedy pivoted Cholesky of the covariance: a column is kept when the part of it that
    the kept columns do not explain has at least ``tolerance`` of its variance. A product
    that equals another operator on every chain (``s_i s_j`` with ``s_i = s_j``, say) is
    redundant: its coupling is not identifiable and fixing it to zero is a gauge choice.
    """
    centred = values - values.mean(0)
    cov = centred.t() @ centred / values.shape[0]
    kept: list[int] = []
    factor = cov.new_zeros((0, 0))
    for column in range(cov.shape[0]):
        cross = cov[kept, column]
        solved = (
            torch.linalg.solve_triangular(factor, cross[:, None], upper=False).flatten()
            if kept
            else cross
        )
        residual = float(cov[column, column] - solved.pow(2).sum())
        if residual > tolerance * float(cov[column, column]):
            size = len(kept)
            grown = cov.new_zeros((size + 1, size + 1))
            grown[:size, :size] = factor
            grown[size, :size] = solved
            grown[size, size] = residual**0.5
            factor = grown
            kept.append(column)
    return torch.tensor(kept, dtype=torch.long)


def embed(result: StabilityMatrix, rows: Tensor, cols: Tensor) -> StabilityMatrix:
    """``result`` on the active operators, placed into zero-filled full-size matrices.

    Args:
        result: the stability matrix estimated on the active operators only.
        rows: (Mc,) bool, the active operators of the coarse level (:func:`active_operators`).
        cols: (Mf,) bool, those of the fine level.

    Returns:
        A :class:`StabilityMatrix` whose ``T`` is (Mc, Mf) (replicas (B, Mc, Mf)) and whose
        covariances are (Mc, Mc), zero on the frozen operators' rows and columns.

    """

    def place(matrix: Tensor | None, r: Tensor, c: Tensor) -> Tensor | None:
        if matrix is None:
            return None
        full = matrix.new_zeros((*matrix.shape[:-2], r.numel(), c.numel()))
        full[..., r.nonzero().flatten()[:, None], c.nonzero().flatten()] = matrix
        return full

    T = place(result.T, rows, cols)
    A = place(result.coarse_covariance, rows, rows)
    if T is None or A is None:  # unreachable: both are always tensors; narrows the type
        raise TypeError("a stability matrix without T or A")
    return StabilityMatrix(
        T,
        place(result.stderr, rows, cols),
        result.condition_number,
        result.num_samples,
        A,
        place(result.replicas, rows, cols),
        place(result.covariance_replicas, rows, rows),
    )
