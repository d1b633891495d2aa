"""Leave a model exactly as it was found, whatever runs on it in between."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["preserved_model_state"]


@contextmanager
def preserved_model_state(model: Callable[..., Any]) -> Iterator[None]:
    """Snapshot a model's mode flags, ``requires_grad`` and buffers; restore them on exit.

    Inside the block every parameter has ``requires_grad=False``, so backward passes
    compute gradients with respect to the inputs only. On exit, even on an exception or
    Ctrl-C, each module gets back its own train/eval flag, each parameter its own
    ``requires_grad``, and, if any module was in training mode (where batch norm updates
    its running statistics on every forward pass), every buffer its value.

    Args:
        model: a ``torch.nn.Module``; any other callable passes through untouched.

    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    grads = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    buffers = (
        [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
        if any(training for _, training in modes)
        else []
    )
    try:
        for parameter, _ in grads:
            parameter.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in grads:
            parameter.requires_grad_(requires_grad)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
