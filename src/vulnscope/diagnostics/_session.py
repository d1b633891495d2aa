"""The boundary every diagnostic shares: validate, guard the model's state, enable gradients."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from vulnscope._validation import (
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
)
from vulnscope.errors import ModelError
from vulnscope.models.checks import is_batch_independent, warn_if_probabilities
from vulnscope.models.state import preserved_model_state

__all__ = ["Session", "diagnostic_session", "in_batches"]

_UNBOUNDED = (-math.inf, math.inf)


class Session(NamedTuple):
    """Validated inputs of a diagnostic, and the model's number of classes."""

    model: Callable[[Tensor], Tensor]
    x: Tensor
    y: Tensor | None
    classes: int


@contextmanager
def diagnostic_session(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor | None = None
) -> Iterator[Session]:
    """Validate ``model``, ``x`` (N, ...) and ``y`` (N,), and run the body with gradients on.

    Every diagnostic computes one operator per sample on a whole batch, which is only right
    when each sample's output depends on that sample alone, so a model whose outputs depend
    on the batch (batch norm or dropout in training mode) is refused. The model is probed
    on the first sample only (its output shape, the label range, outputs that look like
    probabilities): every diagnostic runs its own forward pass on the whole batch and
    checks the shape there. The model's modes, ``requires_grad`` flags and buffers are
    restored on exit.

    Raises:
        ModelError: the model mixes samples of a batch, or returns no (N, C) logits.

    """
    model = check_model(model)
    x = check_inputs(x, bounds=_UNBOUNDED)
    if y is not None:
        y = check_labels(y, n=x.shape[0], device=x.device)
    check_model_matches_inputs(model, x)
    if not is_batch_independent(model):
        raise ModelError(
            "model must treat each sample independently (batch norm or dropout is in "
            "training mode); call model.eval() first"
        )
    with preserved_model_state(model), torch.inference_mode(False):
        x = x.detach()
        with torch.no_grad():
            probe = check_logits(model(x[:1]), 1, name="model (probed on the first sample)")
        if y is not None:
            check_labels_in_range(y, probe.shape[1])
        warn_if_probabilities(probe, stacklevel=5)
        with torch.enable_grad():
            yield Session(model, x, y, probe.shape[1])


def in_batches(total: int, batch_size: int | None) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` (all at once when ``None``)."""
    size = total if batch_size is None else check_int(batch_size, "batch_size")
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]
