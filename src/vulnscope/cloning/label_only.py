"""Publishing the label alone: the strongest output-only countermeasure.

Tramèr, Zhang, Juels, Reiter and Ristenpart (2016), "Stealing machine learning models via
prediction APIs" (USENIX Security), section 8: an API that omits confidences and returns
only the class label. Extraction still works (their section 6, with adaptive queries)
but needs many more queries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope.cloning.defence import OutputDefence

__all__ = ["LabelOnly"]


class LabelOnly(OutputDefence):
    """Publish the one-hot vector of the predicted class.

    Tramèr et al. (2016), "Stealing machine learning models via prediction APIs": the
    label-only countermeasure. The arg-max is ``torch.argmax`` of the true probabilities
    (the lower index on exact ties), so ``preserves_argmax`` is True.

    Args:
        model: the victim classifier (logits out).

    Shape:
        Input (B, ...) queries; output (B, C) float64 one-hot vectors.

    Example:
        >>> LabelOnly(lambda x: x)(torch.tensor([[0.1, 2.0, -1.0]]))
        tensor([[0., 1., 0.]], dtype=torch.float64)

    """

    preserves_argmax = True

    def __init__(self, model: Callable[[Tensor], Tensor]) -> None:
        super().__init__(model)

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """The one-hot vector of each output's arg-max class."""
        return torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
