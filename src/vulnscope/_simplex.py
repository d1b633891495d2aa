r"""The Euclidean projection onto the probability simplex, shared by cloning and defences.

Output poisoning (:mod:`vulnscope.cloning.simplex`) projects a moved probability vector
back onto the simplex; Parseval networks (:mod:`vulnscope.defences.parseval`) keep their
convex-combination weights on it. Neither package owns the other, so the math lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._validation import check_finite, check_tensor
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["project_to_simplex", "project_unchecked"]


def project_to_simplex(z: Tensor) -> Tensor:
    r"""Euclidean projection of each row onto the probability simplex.

    .. math:: \Pi(z) = \arg\min_{q \ge 0,\ \sum_j q_j = 1} \|q - z\|_2 = \max(z - \theta, 0),

    with the threshold ``θ`` found by sorting (Held, Wolfe and Crowder 1974; Wang and
    Carreira-Perpiñán 2013, "Projection onto the probability simplex: an efficient
    algorithm with a simple proof"): O(C log C) per row.

    Args:
        z: (..., C) real values, C >= 1, finite.

    Returns:
        (..., C) float64, non-negative, each row summing to one.

    Example:
        >>> project_to_simplex(torch.tensor([[0.5, 0.8, -0.3]]))
        tensor([[0.3500, 0.6500, 0.0000]], dtype=torch.float64)

    """
    z = check_tensor(z, "z")
    if z.ndim < 1 or z.shape[-1] < 1:
        raise InvalidArgumentError(f"z must have shape (..., C) with C >= 1, got {tuple(z.shape)}")
    if not (z.is_floating_point() or z.dtype in (torch.int32, torch.int64)):
        raise InvalidTypeError(f"z must hold real numbers, got dtype {z.dtype}")
    return project_unchecked(check_finite(z.detach().to(torch.float64), "z"))


def project_unchecked(z: Tensor) -> Tensor:
    """:func:`project_to_simplex` without the checks: (..., C) float64."""
    classes = z.shape[-1]
    ordered = z.sort(dim=-1, descending=True).values
    excess = ordered.cumsum(-1) - 1.0
    counts = torch.arange(1, classes + 1, dtype=z.dtype, device=z.device)
    # The largest k with u_k > (sum_{j<=k} u_j - 1) / k: always >= 1 (u_1 > u_1 - 1).
    support = torch.where(ordered * counts > excess, counts, torch.zeros_like(counts))
    size = support.amax(-1, keepdim=True)
    theta = excess.gather(-1, size.long() - 1) / size
    return (z - theta).clamp_min(0.0)
