"""The distribution of minimal adversarial perturbations over a data set.

Moosavi-Dezfooli, Fawzi and Frossard (2016), "DeepFool: a simple and accurate method to
fool deep neural networks", measure a classifier's robustness by the size of the
smallest perturbation that changes its decision, point by point; the distribution of
those sizes says more than robust accuracy at one budget (robust accuracy at every
budget is its survival function). Several minimal attacks can be combined: each point
keeps the smallest perturbation any of them found.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vulnscope._validation import (
    check_bool,
    check_inputs,
    check_int,
    check_labels,
    check_model,
    check_norm,
)
from vulnscope.attacks.base import Attack
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate._chunks import map_chunks
from vulnscope.evaluate.minimal_chunk import check_minimal_attacks, run_minimal_chunk
from vulnscope.evaluate.pieces import CLEAN, MinimalChunk

__all__ = [
    "CLEAN",
    "QUANTILES",
    "MinimalPerturbations",
    "merge_minimal_chunks",
    "minimal_perturbations",
]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
"""The quantiles :meth:`MinimalPerturbations.to_dict` reports."""


def _quantile(sorted_values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default) that tolerates infinite values."""
    position = q * (sorted_values.size - 1)
    low, high = math.floor(position), math.ceil(position)
    below, above = float(sorted_values[low]), float(sorted_values[high])
    if low == high or below == above:
        return below
    return below + (above - below) * (position - low)


@dataclass(frozen=True)
class MinimalPerturbations:
    """Per-sample minimal adversarial perturbations, and their distribution.

    The statistics cover the points the model classifies correctly; the others need no
    perturbation (norm 0, ``found_by == "clean"``) and are left out of them. A point
    on which no attack succeeded has norm ``inf``: it counts as larger than any
    perturbation found, so a median of ``inf`` means that fewer than half were broken.

    Attributes:
        norms: (N,) float64 size of the smallest adversarial perturbation found, in
            ``norm``; 0 for clean mistakes, ``inf`` where no attack found one.
        found_by: per sample, the name of the attack that found the smallest
            perturbation, ``"clean"`` for a clean mistake, ``None`` if none was found.
        clean_correct: (N,) bool, the model classifies the unperturbed sample correctly.
        x_adv: (N, ...) the smallest adversarial example found; ``x`` where none.
            ``None`` when merged from chunks read back from JSON (checkpoints keep no
            examples).
        norm: the norm of ``norms``.
        attacks: the names of the attacks, in the order they were run.

    """

    norms: Tensor
    found_by: tuple[str | None, ...]
    clean_correct: Tensor
    x_adv: Tensor | None
    norm: str
    attacks: tuple[str, ...]

    def _values(self) -> np.ndarray:
        """The sorted norms of the clean-correct points (inf where none found)."""
        return np.sort(self.norms[self.clean_correct].cpu().numpy())

    @property
    def n_clean_correct(self) -> int:
        """Points the model classifies correctly (the ones the statistics cover)."""
        return int(self.clean_correct.sum())

    @property
    def n_not_found(self) -> int:
        """Clean-correct points on which no attack succeeded."""
        return int(torch.isinf(self.norms[self.clean_correct]).sum())

    @property
    def median(self) -> float:
        """Median over the clean-correct points (``inf`` counts as largest); NaN if none."""
        return self.quantiles([0.5])[0]

    def quantiles(self, qs: Sequence[float] = QUANTILES) -> list[float]:
        """Quantiles ``qs`` (each in [0, 1]) over the clean-correct points, numpy's linear rule.

        NaN if the model gets every point wrong.
        """
        levels = [float(q) for q in qs]
        if any(not 0.0 <= q <= 1.0 for q in levels):
            raise InvalidArgumentError(f"qs must lie in [0, 1], got {levels}")
        values = self._values()
        if values.size == 0:
            return [math.nan] * len(levels)
        return [_quantile(values, q) for q in levels]

    def histogram(self, bins: int | Sequence[float] = 10) -> tuple[np.ndarray, np.ndarray]:
        """``numpy.histogram`` of the finite norms of the clean-correct points.

        Points with no perturbation found are not in any bin (see :attr:`n_not_found`).

        Returns:
            ``(counts, edges)`` as numpy arrays, of lengths B and B + 1.

        """
        if isinstance(bins, int):
            bins = check_int(bins, "bins")
        values = self._values()
        return np.histogram(values[np.isfinite(values)], bins=bins)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the per-sample tensors); None for NaN and inf."""

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        counts: dict[str, int] = {}
        for name in self.found_by:
            key = "none" if name is None else name
            counts[key] = counts.get(key, 0) + 1
        finite = self._values()
        finite = finite[np.isfinite(finite)]
        histogram, edges = self.histogram() if finite.size else (np.zeros(0), np.zeros(0))
        quantiles = zip(QUANTILES, self.quantiles(), strict=True)
        return {
            "norm": self.norm,
            "attacks": list(self.attacks),
            "n": int(self.norms.numel()),
            "n_clean_correct": self.n_clean_correct,
            "n_not_found": self.n_not_found,
            "median": number(self.median),
            "mean_found": number(float(finite.mean())) if finite.size else None,
            "quantiles": {str(q): number(v) for q, v in quantiles},
            "found_by": counts,
            "histogram": {
                "counts": [int(c) for c in histogram],
                "edges": [float(e) for e in edges],
            },
        }


def minimal_perturbations(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    attacks: Attack | Sequence[Attack] | None = None,
    norm: str = "l2",
    batch_size: int | None = None,
    shard: bool = True,
) -> MinimalPerturbations:
    """The smallest adversarial perturbation of each point, over one or more minimal attacks.

    Each attack runs (uncapped unless its ``eps`` is set) on the points the model
    classifies correctly; each point keeps the smallest successful perturbation, and the
    first attack in ``attacks`` wins ties.

    The points go in fixed chunks of ``batch_size`` by index (chunk ``k`` holds points
    ``[k B, (k + 1) B)``), each by :func:`~vulnscope.evaluate.minimal_chunk`, and
    :func:`merge_minimal_chunks` joins them in index order.

    Args:
        model: maps inputs (N, ...) to logits (N, C).
        x: inputs (N, ...), inside the attacks' bounds.
        y: true labels (N,).
        attacks: a minimal untargeted attack or a sequence of them, all in ``norm``;
            default: DeepFool in ``norm``.
        norm: the norm the perturbations are measured in.
        batch_size: points per chunk (each attack call sees a chunk's correctly
            classified points); ``None`` for one chunk of all the points.
        shard: under ``torchrun`` (or any initialised ``torch.distributed`` group of
            several ranks), share the chunks among the ranks; every rank returns the
            whole result, equal to one process's, bit for bit. False runs every chunk
            here.

    Returns:
        :class:`MinimalPerturbations`.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import FisherAttack
        >>> from vulnscope.evaluate import minimal_perturbations
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(6, 1, 2, 2), torch.randint(0, 3, (6,))
        >>> fisher = FisherAttack(minimal=True)
        >>> result = minimal_perturbations(model, x, y, attacks=fisher)
        >>> result.norms.shape, result.norm
        (torch.Size([6]), 'l2')

    """
    model = check_model(model)
    norm = check_norm(norm)
    chosen = check_minimal_attacks(attacks, norm)
    x = check_inputs(x, bounds=chosen[0].bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    size = x.shape[0] if batch_size is None else check_int(batch_size, "batch_size")
    chunks = torch.arange(x.shape[0], device=x.device).split(size)

    def compute(k: int) -> MinimalChunk:
        rows = chunks[k]
        return run_minimal_chunk(model, x[rows], y[rows], attacks=chosen, norm=norm)

    pieces = map_chunks(
        len(chunks),
        compute,
        decode=MinimalChunk.from_json,
        shard=check_bool(shard, "shard"),
        device=x.device,
    )
    return merge_minimal_chunks(pieces)


def merge_minimal_chunks(chunks: Sequence[MinimalChunk]) -> MinimalPerturbations:
    """The distribution over the points of ``chunks``, joined in the order given.

    The per-point fields are concatenated, so the result (its statistics included) is
    the same, bit for bit, however the chunks were spread over processes, as long as
    they come in chunk order.

    Args:
        chunks: the chunks in index order, all of one run (norm and attacks); computed
            here or read back with :meth:`MinimalChunk.from_json`.

    Returns:
        :class:`MinimalPerturbations` over the ``N = sum(len(chunk.norms))`` points, its
        ``x_adv`` (N, ...) the chunks' examples joined, or ``None`` when any chunk holds
        none (read back from JSON without them).

    Raises:
        InvalidArgumentError: no chunks, or chunks of different runs.

    """
    if not chunks:
        raise InvalidArgumentError("chunks must hold at least one MinimalChunk, got none")
    first = chunks[0]
    for index, chunk in enumerate(chunks):
        if (chunk.norm, chunk.attacks) != (first.norm, first.attacks):
            raise InvalidArgumentError(
                f"chunks must come from one run: chunks[{index}] has norm {chunk.norm!r} and "
                f"attacks {chunk.attacks}, chunks[0] {first.norm!r} and {first.attacks}"
            )
    held = [chunk.x_adv for chunk in chunks]
    x_adv = torch.cat([x for x in held if x is not None]) if None not in held else None
    device = None if x_adv is None else x_adv.device
    return MinimalPerturbations(
        norms=torch.tensor(
            [value for chunk in chunks for value in chunk.norms],
            dtype=torch.float64,
            device=device,
        ),
        found_by=tuple(name for chunk in chunks for name in chunk.found_by),
        clean_correct=torch.tensor(
            [ok for chunk in chunks for ok in chunk.clean_correct],
            dtype=torch.bool,
            device=device,
        ),
        x_adv=x_adv,
        norm=first.norm,
        attacks=first.attacks,
    )
