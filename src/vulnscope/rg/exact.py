"""Exact effective couplings of small layers, and the exact coupling map of one RBM layer.

Spin-product operators are orthogonal over the ``2**n`` states, so the couplings of
``q(h) = exp(-Σ_α g_α O_α(h)) / Z`` are a Walsh-Hadamard transform of ``-log q``
(RG.md section 2):  ``g_α = -2⁻ⁿ Σ_h O_α(h) log q(h)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._validation import describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.exact import push_forward
from vulnscope.rbm.rbm import RBM

__all__ = ["coupling_map", "distribution_from_couplings", "exact_couplings", "walsh_hadamard"]


def walsh_hadamard(values: Tensor) -> Tensor:
    """``out[..., α] = Σ_h O_α(h) values[..., h]`` over the ``2**n`` states, in O(n 2**n).

    States and subsets are both indexed by bit masks (bit ``j`` is unit ``j``), and
    ``O_α(h) = Π_{j∈α} (2 h_j - 1)``. The matrix ``O_α(h)`` is not symmetric (it is the
    Sylvester-Hadamard matrix times the parity ``(-1)^|α|``), so the inverse map is
    :func:`distribution_from_couplings`, not a second transform.

    Example:
        >>> walsh_hadamard(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
        [10.0, 2.0, 4.0, 0.0]

    """
    size = values.shape[-1]
    n = size.bit_length() - 1
    if size < 2 or 1 << n != size:
        raise InvalidArgumentError(
            f"values must have 2**n entries in the last dimension, got {size}"
        )
    lead = values.shape[:-1]
    out = values.reshape(*lead, *([2] * n))
    for axis in range(len(lead), len(lead) + n):
        low, high = out.select(axis, 0), out.select(axis, 1)
        out = torch.stack([low + high, high - low], dim=axis)
    return out.reshape(*lead, size)


def exact_couplings(probs: Tensor) -> Tensor:
    """The couplings of every non-constant operator: (..., 2**n) -> (..., 2**n - 1).

    Column ``m - 1`` is the coupling of the product over the set bits of ``m``, the order
    of :meth:`vulnscope.rg.OperatorSet.complete`. Every state needs a positive probability.
    """
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise InvalidTypeError(f"probs must be a floating tensor, got {describe(probs)}")
    if bool((probs <= 0).any()):
        raise InvalidArgumentError(
            "probs must be positive on every state: the couplings of -log q are infinite "
            "where q = 0"
        )
    transform = walsh_hadamard(-probs.log())
    return transform[..., 1:] / probs.shape[-1]


def distribution_from_couplings(couplings: Tensor) -> Tensor:
    """``q(h) = exp(-H(h)) / Z`` from couplings: (..., 2**n - 1) -> (..., 2**n)."""
    size = couplings.shape[-1] + 1
    if size < 2 or 1 << (size.bit_length() - 1) != size:
        raise InvalidArgumentError(f"couplings must have 2**n - 1 entries, got {size - 1}")
    full = torch.cat([couplings.new_zeros((*couplings.shape[:-1], 1)), couplings], -1)
    # H(h) = Σ_α g_α O_α(h) = P · WH(P · g), with P the parity (-1)^|α| of each index
    parity = 1 - 2 * (_popcount(torch.arange(size)) % 2).to(couplings.dtype)
    energy = parity * walsh_hadamard(parity * full)
    return (-energy).softmax(-1)


def _popcount(values: Tensor) -> Tensor:
    count = torch.zeros_like(values)
    while bool(values.any()):
        count += values & 1
        values = values >> 1
    return count


def coupling_map(couplings: Tensor, rbm: RBM) -> Tensor:
    """The exact RG map ``g^(k-1) ↦ g^(k)`` through one RBM layer (eq. 2 in couplings).

    Args:
        couplings: (..., 2**n_visible - 1) couplings of the layer below.
        rbm: the layer; hidden widths up to 16.

    Returns:
        (..., 2**n_hidden - 1) couplings of ``q_k(h_k) = Σ t_k(h_k | h_{k-1}) q_{k-1}``.

    """
    dist = distribution_from_couplings(couplings)
    lead = dist.shape[:-1]
    pushed = push_forward(dist.reshape(-1, dist.shape[-1]), rbm, upward=True)
    return exact_couplings(pushed).reshape(*lead, -1)
