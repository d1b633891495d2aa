"""Supervised training of a classifier on an in-memory batch of images."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_int, check_labels, check_real, check_seed
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["train_classifier"]

logger = logging.getLogger(__name__)


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place with Adam on the cross-entropy, then put it in eval mode.

    Minibatches come from a permutation drawn each epoch from a generator seeded with
    ``seed``; for a fully reproducible run, also create the model under a fixed seed.

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C).
        x: training inputs (N, ...), floating.
        y: training labels (N,), integer.
        epochs: passes over the data.
        batch_size: samples per step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
        seed: seed of the minibatch order.

    Returns:
        ``model``, trained and in eval mode.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise InvalidArgumentError("x must be a floating tensor of shape (N, ...)")
    y = check_labels(y, n=x.shape[0], device=x.device)
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    generator = torch.Generator().manual_seed(check_seed(seed) or 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.numel()
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / x.shape[0])
    return model.eval()
