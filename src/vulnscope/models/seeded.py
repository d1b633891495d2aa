"""Build a network under a seed, without touching the caller's global random state."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vulnscope._validation import describe
from vulnscope.errors import InvalidTypeError

__all__ = ["build_seeded"]


def build_seeded(
    factory: Callable[[], nn.Module], seed: int, *, name: str = "factory"
) -> nn.Module:
    """``factory()`` with the global CPU generator seeded with ``seed``, its state given back.

    PyTorch's layers draw their initial weights from the global generator; building
    under a fork of it makes the initialisation a function of ``seed`` alone and leaves
    every other draw of the caller's program where it was.

    Args:
        factory: builds the network (an ``nn.Module`` class or any function).
        seed: seed of the initialisation.
        name: what to call ``factory`` in an error message.

    Returns:
        The new module.

    """
    if not callable(factory):
        raise InvalidTypeError(f"{name} must be callable, got {describe(factory)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"{name} must return a torch.nn.Module, returned {describe(model)}")
    return model
