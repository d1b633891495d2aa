"""Publishing rounded probabilities: the countermeasure of Tramèr et al. (2016).

Tramèr, Zhang, Juels, Reiter and Ristenpart (2016), "Stealing machine learning models via
prediction APIs" (USENIX Security), section 8: an API that reports confidences to fewer
decimals leaks less to an equation-solving or gradient-based extractor. Rounding each
entry on its own would publish vectors that no longer sum to one, which a cloner notices;
largest-remainder rounding keeps the sum exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._validation import check_int
from vulnscope.cloning.defence import OutputDefence
from vulnscope.errors import InvalidArgumentError

__all__ = ["Rounding", "round_probabilities"]

_MOST_DECIMALS = 12
"""float64 holds ``p x 10^d`` with integer precision to spare up to here."""


def round_probabilities(probs: Tensor, decimals: int) -> Tensor:
    """Largest-remainder rounding of probability vectors to ``decimals`` decimal places.

    Each entry is rounded down to a multiple of ``u = 10^-decimals``; the units still
    missing from a total of one go, one each, to the entries with the largest remainders
    (the lower class index first on equal remainders). Every entry moves by less than
    ``u``, the row sums to exactly ``10^decimals`` units, and the L1 change is at most
    ``u C / 2``.

    Args:
        probs: (B, C) probability vectors.
        decimals: decimal places kept, 0 to 12.

    Returns:
        (B, C) float64 multiples of ``10^-decimals`` summing to one.

    Example:
        >>> round_probabilities(torch.tensor([[0.334, 0.333, 0.333]]), 1)
        tensor([[0.4000, 0.3000, 0.3000]], dtype=torch.float64)

    """
    scale = int(10**decimals)
    scaled = probs.to(torch.float64) / probs.sum(-1, keepdim=True) * scale
    units = scaled.floor()
    remainders = scaled - units
    missing = (scale - units.sum(-1, keepdim=True)).round().clamp(0, probs.shape[-1])
    order = torch.sort(remainders, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(probs.shape[-1], device=probs.device).expand_as(order)
    )
    units = units + (ranks < missing).to(units.dtype)
    return units / scale


class Rounding(OutputDefence):
    """Publish probabilities rounded to a few decimals, still summing to one.

    Tramèr, Zhang, Juels, Reiter and Ristenpart (2016), "Stealing machine learning models
    via prediction APIs": the rounding countermeasure, with largest-remainder rounding
    (:func:`round_probabilities`). Two close classes can round to the same value and the
    tie goes to the lower index, so the arg-max can change: ``preserves_argmax`` is False.

    Args:
        model: the victim classifier (logits out).
        decimals: decimal places published, 0 to 12.

    Shape:
        Input (B, ...) queries; output (B, C) float64 probability vectors.

    Example:
        >>> Rounding(lambda x: 2.0 * x, decimals=2)(torch.eye(3))
        tensor([[0.7900, 0.1100, 0.1000],
                [0.1100, 0.7900, 0.1000],
                [0.1100, 0.1000, 0.7900]], dtype=torch.float64)

    """

    preserves_argmax = False

    def __init__(self, model: Callable[[Tensor], Tensor], *, decimals: int = 2) -> None:
        super().__init__(model)
        self.decimals = check_int(decimals, "decimals", minimum=0)
        if self.decimals > _MOST_DECIMALS:
            raise InvalidArgumentError(
                f"decimals must be at most {_MOST_DECIMALS} (float64 precision), "
                f"got {self.decimals}"
            )

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """Each output rounded to ``decimals`` places by largest remainder."""
        return round_probabilities(probs, self.decimals)
