"""Operators of the effective Hamiltonians: spin products over subsets of units.

A layer's effective Hamiltonian is ``H(h) = Σ_α g_α O_α(h)`` with ``O_α = Π_{i∈α} s_i``
and spins ``s_i = 2 h_i - 1`` (Kenway 2018, eq. 5; RG.md section 2). The complete set
on ``n`` units has ``2**n - 1`` non-constant operators; wider layers use a truncation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from vulnscope._validation import check_int, describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["OperatorSet"]


@dataclass(frozen=True)
class OperatorSet:
    """Spin products ``O_α(h) = Π_{i∈α} (2 h_i - 1)`` over chosen subsets of ``n_units``.

    Build one with the class methods (:meth:`singles`, :meth:`complete`,
    :meth:`pairs_by_weight`, :meth:`pairs_by_correlation`, :meth:`triples_by_weight`)
    and join sets with ``+``; call it on states to evaluate every operator at once.

    Example:
        >>> ops = OperatorSet.singles(3) + OperatorSet.from_subsets(3, [(0, 2)])
        >>> ops(torch.tensor([[1.0, 0.0, 0.0]])).tolist()
        [[1.0, -1.0, -1.0, -1.0]]
        >>> ops.labels
        ['s0', 's1', 's2', 's0·s2']

    """

    n_units: int
    subsets: tuple[tuple[int, ...], ...]

    @classmethod
    def from_subsets(cls, n_units: int, subsets: Iterable[Sequence[int]]) -> OperatorSet:
        """An operator set from explicit subsets (each sorted; duplicates dropped in order)."""
        n_units = check_int(n_units, "n_units")
        cleaned: dict[tuple[int, ...], None] = {}
        for subset in subsets:
            units = tuple(sorted({int(unit) for unit in subset}))
            if not units:
                raise InvalidArgumentError("subsets must not be empty (the constant operator)")
            if units[0] < 0 or units[-1] >= n_units:
                raise InvalidArgumentError(
                    f"subsets must hold units in [0, {n_units - 1}], got {list(subset)}"
                )
            cleaned[units] = None
        if not cleaned:
            raise InvalidArgumentError("an operator set needs at least one operator, got none")
        return cls(n_units, tuple(cleaned))

    @classmethod
    def singles(cls, n_units: int) -> OperatorSet:
        """The ``n`` single-spin operators ``s_i``."""
        return cls.from_subsets(n_units, ((unit,) for unit in range(check_int(n_units, "n_units"))))

    @classmethod
    def complete(cls, n_units: int) -> OperatorSet:
        """All ``2**n - 1`` non-constant products, ordered by the bit mask of the subset.

        Operator ``m - 1`` is the product over the set bits of ``m``: the order of the
        Walsh-Hadamard transform in :func:`vulnscope.rg.exact_couplings`.
        """
        n_units = check_int(n_units, "n_units")
        if n_units > 16:
            raise InvalidArgumentError(f"the complete set needs n_units <= 16, got {n_units}")
        masks = range(1, 1 << n_units)
        return cls(n_units, tuple(tuple(j for j in range(n_units) if m >> j & 1) for m in masks))

    @classmethod
    def pairs_by_weight(cls, weight: Tensor, count: int) -> OperatorSet:
        """The ``count`` pairs ``s_i s_j`` with the largest ``|(Wᵀ W)_{ij}|``.

        ``weight`` is (m, n): the couplings of the ``n`` units to the layer above, which
        reads them together. Second order in ``W`` is where the layer above induces
        pairwise couplings (the cumulant expansion of its free energy).
        """
        weight = _check_matrix(weight, "weight")
        gram = (weight.t() @ weight).abs()
        return cls._top_pairs(gram, count)

    @classmethod
    def pairs_by_correlation(cls, states: Tensor, count: int) -> OperatorSet:
        """The ``count`` pairs with the largest measured ``|corr(s_i, s_j)|`` on (S, n) states."""
        states = _check_matrix(states, "states")
        centred = states - states.mean(0)
        scale = centred.pow(2).sum(0).sqrt().clamp_min(1e-12)
        correlation = (centred.t() @ centred) / (scale[:, None] * scale[None, :])
        return cls._top_pairs(correlation.abs(), count)

    @classmethod
    def triples_by_weight(cls, weight: Tensor, count: int) -> OperatorSet:
        """The ``count`` triples with the largest ``|Σ_m W_mi W_mj W_mk|`` (third cumulant order).

        Candidates are the triples among the units of the strongest pairs, so the cost
        stays small on wide layers.
        """
        weight = _check_matrix(weight, "weight")
        count = check_int(count, "count")
        n = weight.shape[1]
        if n < 3:
            raise InvalidArgumentError(f"triples need at least 3 units, got {n}")
        pool = sorted(
            {
                u
                for pair in cls.pairs_by_weight(weight, min(4 * count, n * (n - 1) // 2)).subsets
                for u in pair
            }
        )[:24]
        candidates = list(itertools.combinations(pool, 3))
        index = torch.tensor(candidates)
        score = (weight[:, index[:, 0]] * weight[:, index[:, 1]] * weight[:, index[:, 2]]).sum(0)
        best = score.abs().argsort(descending=True, stable=True)[:count]
        return cls.from_subsets(n, (candidates[int(i)] for i in best))

    @classmethod
    def _top_pairs(cls, score: Tensor, count: int) -> OperatorSet:
        count = check_int(count, "count")
        n = score.shape[0]
        rows, cols = torch.triu_indices(n, n, offset=1)
        if count > rows.numel():
            raise InvalidArgumentError(
                f"count must be at most {rows.numel()} pairs of {n} units, got {count}"
            )
        order = score[rows, cols].argsort(descending=True, stable=True)[:count]
        return cls.from_subsets(n, ((int(rows[i]), int(cols[i])) for i in order))

    def __len__(self) -> int:
        return len(self.subsets)

    def __add__(self, other: OperatorSet) -> OperatorSet:
        if not isinstance(other, OperatorSet) or other.n_units != self.n_units:
            raise InvalidArgumentError("only operator sets on the same units can be joined")
        return OperatorSet.from_subsets(self.n_units, self.subsets + other.subsets)

    @cached_property
    def index(self) -> Tensor:
        """(M, max order) unit indices, padded with ``n_units`` (a constant +1 spin)."""
        order = max(len(subset) for subset in self.subsets)
        rows = [list(subset) + [self.n_units] * (order - len(subset)) for subset in self.subsets]
        return torch.tensor(rows, dtype=torch.long)

    @property
    def orders(self) -> list[int]:
        """Number of spins in each operator."""
        return [len(subset) for subset in self.subsets]

    @property
    def labels(self) -> list[str]:
        """Readable names such as ``"s3·s7"``."""
        return ["·".join(f"s{unit}" for unit in subset) for subset in self.subsets]

    def __call__(self, states: Tensor) -> Tensor:
        """Operator values on binary states: (..., n_units) -> (..., M), entries ±1.

        One gather and one product per spin position, over every sample and operator at
        once; real-valued ``states`` (probabilities) give products of mean spins.
        """
        if not isinstance(states, Tensor) or not states.is_floating_point():
            raise InvalidTypeError(f"states must be a floating tensor, got {describe(states)}")
        if states.shape[-1] != self.n_units:
            raise InvalidArgumentError(
                f"states must have {self.n_units} units in the last dimension, "
                f"got shape {tuple(states.shape)}"
            )
        spins = torch.cat([2 * states - 1, states.new_ones((*states.shape[:-1], 1))], -1)
        index = self.index.to(states.device)
        values = spins[..., index[:, 0]]
        for position in range(1, index.shape[1]):
            values = values * spins[..., index[:, position]]
        return values


def _check_matrix(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.ndim != 2:
        raise InvalidTypeError(f"{name} must be a 2-D floating tensor, got {describe(value)}")
    return value.detach()
