"""Evaluation mode for the moment an objective crafts its adversarial examples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluation_mode"]


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode inside the block; give each its own flag back on exit.

    Adversarial examples are crafted against the deterministic network (dropout off,
    batch norm on its running statistics), as in Madry et al. (2018) and Zhang et al.
    (2019); the training step that follows runs in training mode again.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model.eval()
    finally:
        for module, training in modes:
            module.training = training
