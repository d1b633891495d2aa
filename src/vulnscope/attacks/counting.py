"""The model as attacks see it: evaluations counted, batch shapes kept few."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["CountingModel"]


class CountingModel:
    """Wraps a model: counts its evaluations per sample and keeps batch shapes few.

    Attacks receive their model through this wrapper, so the counts in
    :class:`AttackResult` need no bookkeeping in the attacks themselves.

    Early stopping shrinks the batch a little at every step. On a CPU, oneDNN builds
    (and caches) kernels for each new input shape, which costs more than a small model's
    whole forward pass; so, for a model that treats samples independently, each batch is
    padded with copies of its first sample up to the next size of a geometric ladder
    (ratio 0.8) below the largest batch seen, and only the real rows are returned. A
    whole audit then sees a few dozen shapes instead of hundreds. Counts are of real
    samples.

    Args:
        model: the wrapped model.
        deterministic: whether the model is a deterministic function of its input (False
            for a model in training mode with dropout or batch norm); attacks may exploit
            determinism, e.g. to stop a trajectory that has entered a cycle.
        batch_independent: whether a sample's output is independent of the rest of its
            batch; only then are batches padded.

    """

    _SHRINK = 0.8
    _SMALLEST_PADDED = 8

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        *,
        deterministic: bool = True,
        batch_independent: bool = True,
    ) -> None:
        self.model = model
        self.deterministic = deterministic
        self.batch_independent = batch_independent
        self.forward_evals = 0
        self.gradient_evals = 0
        self._largest = 0

    def padded_size(self, n: int) -> int:
        """The batch size a batch of ``n`` samples is run at."""
        self._largest = max(self._largest, n)
        if not self.batch_independent or n <= self._SMALLEST_PADDED:
            return n
        size = self._largest
        while math.ceil(size * self._SHRINK) >= n:
            size = math.ceil(size * self._SHRINK)
        return size

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (N, ...) -> (N, C)."""
        n = x.shape[0]
        size = self.padded_size(n)
        if size > n:
            padding = x[:1].detach().expand(size - n, *x.shape[1:])
            logits = self.model(torch.cat([x, padding]))[:n]
        else:
            logits = self.model(x)
        self.forward_evals += n
        if logits.requires_grad:
            logits.register_hook(self._count_backward)
        return logits

    def record(self, *, forward: int = 0, gradient: int = 0) -> None:
        """Count evaluations made on ``self.model`` directly, outside this wrapper.

        For attacks that hand the unwrapped model to a transform (``torch.func``) whose
        batching the wrapper's hooks cannot see.
        """
        self.forward_evals += forward
        self.gradient_evals += gradient

    def _count_backward(self, grad: Tensor) -> None:
        self.gradient_evals += grad.shape[0]
