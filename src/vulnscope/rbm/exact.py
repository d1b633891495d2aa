"""Exact classification and generation passes by enumerating every state of each layer.

Feasible for hidden widths up to about 16 units: the transition from a layer of ``n``
units to one of ``m`` units is a ``2**n x 2**m`` matrix, built in row chunks so that
memory stays bounded. States are indexed so that bit ``j`` of the index is unit ``j``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.rbm import RBM, log_conditional

__all__ = ["MAX_EXACT_WIDTH", "binary_states", "push_forward"]

MAX_EXACT_WIDTH = 16
"""Widest hidden layer that exact enumeration accepts (2**16 states)."""

_CHUNK_ELEMENTS = 1 << 22


def binary_states(n: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Every state of ``n`` binary units: (2**n, n), row ``i`` holds the bits of ``i``.

    Example:
        >>> binary_states(2).tolist()
        [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]

    """
    if n > MAX_EXACT_WIDTH:
        raise InvalidArgumentError(
            f"exact enumeration handles layers of at most {MAX_EXACT_WIDTH} units "
            f"(2**{MAX_EXACT_WIDTH} states), got a layer of {n}; use the sampled pass"
        )
    index = torch.arange(1 << n)
    return ((index[:, None] >> torch.arange(n)) & 1).to(dtype)


def push_forward(dist: Tensor, rbm: RBM, *, upward: bool = True) -> Tensor:
    """One exact RG step: ``q'(h') = Σ_h t(h' | h) q(h)`` for a batch of distributions.

    Args:
        dist: (B, 2**n) probabilities over the source layer's states (rows sum to one).
        rbm: the layer between source and target.
        upward: classification direction (visible to hidden) or generation (hidden to visible).

    Returns:
        (B, 2**m) (or (B, C) into a softmax group) probabilities, differentiable in ``dist``
        and in the RBM's parameters.

    """
    label_states = torch.eye(rbm.n_hidden, dtype=dist.dtype)
    hidden = (
        label_states if rbm.hidden == "softmax" else binary_states(rbm.n_hidden, dtype=dist.dtype)
    )
    visible = binary_states(rbm.n_visible, dtype=dist.dtype)
    source, target = (visible, hidden) if upward else (hidden, visible)
    weight = rbm.weight.to(dist.dtype)
    softmax_target = upward and rbm.hidden == "softmax"
    out = dist.new_zeros((dist.shape[0], target.shape[0]))
    rows = max(1, _CHUNK_ELEMENTS // target.shape[0])
    for start in range(0, source.shape[0], rows):
        chunk = source[start : start + rows]
        if upward:
            field = chunk @ weight.t() + rbm.hidden_bias.to(dist.dtype)
        else:
            field = chunk @ weight + rbm.visible_bias.to(dist.dtype)
        log_t = log_conditional(field, target, softmax=softmax_target)
        out = out + dist[:, start : start + rows] @ log_t.exp()
    return out
