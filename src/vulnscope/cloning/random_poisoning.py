"""Output poisoning along a random direction: the baseline of the same L1 size.

A defence that moves each output by the same L1 distance as
:class:`~vulnscope.cloning.fisher_poisoning.FisherPoisoning` or
:class:`~vulnscope.cloning.mad.MAD`, but in a direction that knows nothing about the
cloner. Any advantage of the informed defences over it is due to their choice of
direction, not to the size of the poisoning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._random import row_generators
from vulnscope._validation import check_real
from vulnscope.cloning.defence import OutputDefence, check_defence_budget
from vulnscope.cloning.simplex import check_budget, search_along, sum_zero_projection

__all__ = ["RandomPoisoning"]


class RandomPoisoning(OutputDefence):
    """Poison each output along a random sum-zero direction by an L1 budget, class kept.

    The baseline of Kenway (2018b, section IV) and of Orekondy, Schiele and Fritz (2020,
    "Prediction Poisoning", their random-noise baseline): a Gaussian direction per query,
    projected to sum zero, drawn from a generator seeded by ``(seed, the query's bytes)``
    (:func:`~vulnscope._random.row_seeds`), so a repeated query gets the same
    answer; then :func:`~vulnscope.cloning.simplex.perturb_along` by ``budget``.

    Args:
        model: the victim classifier (logits out).
        budget: the L1 size of the poisoning per output, in ``(0, 2(1 - 1/C))``.
        margin: the smallest gap to the runner-up class a poisoned output keeps.
        seed: key of the per-query directions (``None``: a secret key drawn once).

    Shape:
        Input (B, ...) queries; output (B, C) float64 probability vectors.

    Example:
        >>> published = RandomPoisoning(lambda x: 4.0 * x, 0.1).publish(torch.eye(3))
        >>> [round(value, 12) for value in published.l1.tolist()]
        [0.1, 0.1, 0.1]
        >>> published.probs.argmax(-1)
        tensor([0, 1, 2])

    """

    preserves_argmax = True

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        budget: float,
        *,
        margin: float = 1e-3,
        seed: int | None = 0,
    ) -> None:
        super().__init__(model, seed=seed)
        self.budget = check_defence_budget(budget, self.model)
        self.margin = check_real(margin, "margin", minimum=0.0)

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """Each output moved along its own random direction by the budget, class kept."""
        budget = check_budget(self.budget, probs.shape[1])
        classes = probs.shape[1]
        directions = torch.stack(
            [
                torch.randn(classes, generator=generator, dtype=torch.float64)
                for generator in row_generators(x, self._key)
            ]
        ).to(probs.device)
        published, _, _ = search_along(
            probs, sum_zero_projection(directions), budget, margin=self.margin, both_signs=True
        )
        return published
