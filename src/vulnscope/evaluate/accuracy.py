"""Predictions and clean accuracy, in batches and without gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._validation import check_int, check_labels, check_logits, check_model
from vulnscope.errors import InvalidArgumentError

__all__ = ["accuracy", "predict"]


def predict(
    model: Callable[[Tensor], Tensor], x: Tensor, *, batch_size: int | None = 512
) -> Tensor:
    """Predicted classes, shape (N,) int64, for inputs ``x`` (N, ...).

    Args:
        model: maps (N, ...) to logits (N, C).
        x: inputs.
        batch_size: samples per forward pass; ``None`` for all at once.

    """
    model = check_model(model)
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise InvalidArgumentError("x must be a tensor of shape (N, ...)")
    size = x.shape[0] if batch_size is None else check_int(batch_size, "batch_size")
    predictions = []
    with torch.no_grad():
        for start in range(0, x.shape[0], max(size, 1)):
            chunk = x[start : start + size]
            predictions.append(check_logits(model(chunk), chunk.shape[0]).argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.int64)


def accuracy(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch_size: int | None = 512
) -> float:
    """Fraction of ``x`` (N, ...) that ``model`` classifies as ``y`` (N,)."""
    y = check_labels(y, n=x.shape[0], device=x.device)
    return float((predict(model, x, batch_size=batch_size) == y).double().mean())
