"""Supervised training of a classifier on an in-memory batch of images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import (
    check_batch,
    check_int,
    check_labels,
    check_logits,
    check_real,
    check_seed,
    check_targets,
)
from vulnscope.errors import InvalidTypeError

__all__ = ["Objective", "ScheduledObjective", "train_classifier"]

logger = logging.getLogger(__name__)

Objective = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]
"""The loss of one minibatch: ``objective(model, x_batch, y_batch, generator)`` -> scalar.

Called with the model in training mode; what it returns is minimised. A training-time
defence (adversarial training, TRADES, CURE, Manifold Mixup, ...) is an objective; the
generator is its only source of randomness."""


@runtime_checkable
class ScheduledObjective(Protocol):
    """An objective whose loss follows a schedule over training (a ramped eps, a weight).

    :func:`train_classifier` calls :meth:`set_epoch` before every minibatch with the
    training's progress in epochs, counted from 0: ``epoch + done / N``, where ``done``
    samples of the ``N`` were seen earlier in the epoch (so 1.5 is half-way through the
    second epoch). Provable training (:mod:`vulnscope.defences.provable_training`) ramps
    its eps with it.
    """

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The minibatch loss, as an :data:`Objective`."""
        ...

    def set_epoch(self, epoch: float) -> None:
        """Move the schedule to ``epoch`` (fractional, >= 0)."""
        ...


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
    objective: Objective | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    r"""Train ``model`` in place with Adam on the cross-entropy, then put it in eval mode.

    The targets are either class labels or probability vectors. Probability targets
    ``t`` (what a model-extraction attacker gets back from a victim that publishes its
    outputs) are fitted by the soft cross-entropy

    .. math::
        \ell(z, t) = -\sum_j t_j \log \operatorname{softmax}(z)_j
                   = \mathrm{KL}(t \,\|\, \operatorname{softmax}(z)) + H(t),

    so the model's own probabilities are pulled towards ``t``, not just its arg-max.

    Minibatches come from a permutation drawn each epoch from a generator seeded with
    ``seed``; for a fully reproducible run, also create the model under a fixed seed.

    Args:
        model: the classifier, mapping (N, ...) to logits (N, C).
        x: training inputs (N, ...), floating.
        y: training targets: labels (N,), integer, or probability vectors (N, C),
            floating, each row non-negative and summing to one (within 1e-4), with C the
            model's number of outputs.
        epochs: passes over the data.
        batch_size: samples per step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
        seed: seed of the minibatch order, and (derived from it) of the objective's
            generator.
        objective: the minibatch loss (see :data:`Objective`); ``None`` for the
            cross-entropy above. A :class:`ScheduledObjective` is told the progress
            before every minibatch.
        after_step: called with the model after every optimiser step (e.g. the Parseval
            retraction, :func:`vulnscope.defences.parseval_retraction`).

    Returns:
        ``model``, trained and in eval mode.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_batch(x)
    if isinstance(y, Tensor) and y.is_floating_point() and y.ndim != 1:
        y = _check_probability_targets(model, x, y)
    else:
        y = check_labels(y, n=x.shape[0], device=x.device)
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    if objective is not None and not callable(objective):
        raise InvalidTypeError(f"objective must be callable, got {type(objective).__name__}")
    if after_step is not None and not callable(after_step):
        raise InvalidTypeError(f"after_step must be callable, got {type(after_step).__name__}")
    seed = check_seed(seed) or 0
    generator = torch.Generator().manual_seed(seed)
    # the objective draws from its own stream, so the minibatch order never depends on it
    objective_generator = torch.Generator(device=x.device).manual_seed(seed ^ _OBJECTIVE_STREAM)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduled = objective if isinstance(objective, ScheduledObjective) else None
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            if objective is None:
                # with (B, C) float targets, cross_entropy is the soft cross-entropy above
                loss = F.cross_entropy(model(x[batch]), y[batch])
            else:
                if scheduled is not None:
                    scheduled.set_epoch(epoch + start / x.shape[0])
                loss = objective(model, x[batch], y[batch], objective_generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            total += float(loss.detach()) * batch.numel()
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / x.shape[0])
    return model.eval()


_OBJECTIVE_STREAM = 0x5EED_0B1E


def _check_probability_targets(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Probability targets (N, C) matching the model's width, in the model's output dtype."""
    # one sample in eval mode: the width without touching batch-norm statistics
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            logits = check_logits(model(x[:1]), 1)
    finally:
        for module, training in modes:
            module.training = training
    check_targets(y, n=x.shape[0], num_classes=logits.shape[1], device=logits.device)
    return y.to(device=logits.device, dtype=logits.dtype)  # float64 targets keep their digits
