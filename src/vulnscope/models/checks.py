"""Warnings about models that would make an evaluation misleading.

Following AutoAttack's ``checks.py`` (Croce and Hein 2020): these do not stop a run, they
warn with a :class:`~vulnscope.errors.VulnscopeWarning` that says what to do instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope.errors import VulnscopeWarning

__all__ = [
    "is_batch_independent",
    "looks_like_probabilities",
    "warn_if_probabilities",
    "warn_if_training_mode",
]

_STOCHASTIC_IN_TRAINING = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def warn_if_training_mode(model: Callable[..., Any], *, stacklevel: int = 3) -> bool:
    """Warn when a model in training mode holds batch norm or dropout; return whether it did.

    In training mode those layers make the output random or dependent on the rest of the
    batch, which looks like robustness and is not (gradient obfuscation).
    """
    if not isinstance(model, nn.Module):
        return False
    culprits = sorted(
        {
            type(module).__name__
            for module in model.modules()
            if module.training and isinstance(module, _STOCHASTIC_IN_TRAINING)
        }
    )
    if culprits:
        warnings.warn(
            f"the model is in training mode with {', '.join(culprits)}: its outputs are random "
            "or depend on the batch, which hides its true robustness; call model.eval() first",
            VulnscopeWarning,
            stacklevel=stacklevel,
        )
    return bool(culprits)


def is_batch_independent(model: Callable[..., Any]) -> bool:
    """Whether each sample's output depends on that sample alone, for the model as it is now.

    False for batch norm in training mode or without running statistics (it normalises
    with the batch's own statistics) and for dropout in training mode (its masks are
    drawn per call). A callable that is not an ``nn.Module`` is assumed independent.
    """
    if not isinstance(model, nn.Module):
        return True
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or not module.track_running_stats
        ):
            return False
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            return False
    return True


def looks_like_probabilities(outputs: Tensor, *, atol: float = 1e-4) -> bool:
    """True when every row is non-negative and sums to one: softmax outputs, not logits."""
    with torch.no_grad():
        rows = outputs.detach().double()
        return bool(
            (rows >= 0).all()
            and (rows <= 1).all()
            and torch.allclose(rows.sum(dim=1), torch.ones_like(rows[:, 0]), atol=atol)
        )


def warn_if_probabilities(outputs: Tensor, *, stacklevel: int = 3) -> bool:
    """Warn when a model's outputs look like probabilities; return whether it did.

    Attacks expect logits: a softmax at the end saturates and its gradients vanish, so
    gradient attacks fail for reasons that have nothing to do with robustness.
    """
    if looks_like_probabilities(outputs):
        warnings.warn(
            "the model's outputs look like probabilities (non-negative rows summing to 1); "
            "attacks expect logits: remove the final softmax",
            VulnscopeWarning,
            stacklevel=stacklevel,
        )
        return True
    return False
