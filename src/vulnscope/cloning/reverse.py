"""The reverse (data-generating) model whose Fisher information steers output poisoning.

Kenway (2018b, eqs. 19-22) poisons a published output ``y`` along the top eigenvector of
the Fisher information of the generation pass ``q̃_0(x | y)`` with respect to ``y``: the
change of ``y`` that most changes the data a cloner would associate with it. Anything
that can give that matrix for a batch of output vectors can steer
:class:`~vulnscope.cloning.FisherPoisoning`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vulnscope._validation import describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["MemoizedReverse", "ReverseModel"]


@runtime_checkable
class ReverseModel(Protocol):
    """A generator of inputs from output vectors, with its Fisher information in ``y``."""

    @property
    def num_classes(self) -> int:
        """C, the length of the output vectors it generates from."""
        ...

    def output_fisher(self, probs: Tensor) -> Tensor:
        """``F̃(y) = E_{x ~ q̃(x|y)}[∇_y log q̃(x|y) ∇_y log q̃(x|y)ᵀ]``: (B, C) -> (B, C, C).

        Symmetric positive semi-definite, float64, one matrix per row of ``probs``
        (probability vectors: the outputs a classifier publishes).
        """
        ...


class MemoizedReverse:
    """A :class:`ReverseModel` that computes each output vector's Fisher matrix once.

    The Monte Carlo RG estimate of the generation pass costs a fraction of a second per
    output; a study that publishes the same outputs at several budgets and seeds asks for
    the same matrices again. Rows are keyed by their exact float64 bytes.

    Example:
        >>> class Identity:
        ...     num_classes = 2
        ...     def output_fisher(self, probs):
        ...         return torch.eye(2, dtype=torch.float64).expand(len(probs), 2, 2)
        >>> memo = MemoizedReverse(Identity())
        >>> _ = memo.output_fisher(torch.tensor([[0.3, 0.7], [0.3, 0.7]]))
        >>> memo.computed
        1

    """

    def __init__(self, reverse: ReverseModel) -> None:
        if not isinstance(reverse, ReverseModel):
            raise InvalidTypeError(
                f"reverse must have num_classes and output_fisher(probs), got {describe(reverse)}"
            )
        self.reverse = reverse
        self._cache: dict[bytes, Tensor] = {}

    @property
    def num_classes(self) -> int:
        """C of the wrapped model."""
        return self.reverse.num_classes

    @property
    def computed(self) -> int:
        """Distinct output vectors computed so far."""
        return len(self._cache)

    def output_fisher(self, probs: Tensor) -> Tensor:
        """The wrapped model's ``output_fisher``, computed only for rows not seen before."""
        if not isinstance(probs, Tensor) or probs.ndim != 2:
            raise InvalidArgumentError(
                f"probs must be a (B, C) tensor of output vectors, got {describe(probs)}"
            )
        keys = [row.numpy().tobytes() for row in probs.detach().double().cpu()]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            rows = torch.stack(
                [torch.frombuffer(bytearray(key), dtype=torch.float64) for key in missing]
            )
            for key, matrix in zip(missing, self.reverse.output_fisher(rows), strict=True):
                self._cache[key] = matrix.detach().clone()
        if not keys:
            return probs.new_zeros((0, probs.shape[1], probs.shape[1]), dtype=torch.float64)
        return torch.stack([self._cache[k] for k in keys])
