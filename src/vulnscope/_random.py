"""Explicit random generators: every stochastic function takes a seed or a generator."""

from __future__ import annotations

import hashlib
import math
import secrets

import torch
from torch import Tensor

from vulnscope._validation import check_seed, check_tensor

__all__ = ["make_generator", "resolve_generator", "row_generators", "row_seeds"]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (fresh entropy when ``None``)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def resolve_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device | str = "cpu"
) -> torch.Generator:
    """``generator`` when given, else a new one seeded with ``seed``."""
    return generator if generator is not None else make_generator(seed, device)


def row_seeds(x: Tensor, seed: int | None) -> list[int]:
    """One 63-bit seed per input row, derived from ``seed`` and the bytes of that row.

    A BLAKE2b hash of the seed and the row's raw bytes (dtype and values): the same row
    gets the same seed in any batch, in any process. ``seed=None`` draws a fresh key from
    the operating system's entropy for this call.

    Args:
        x: (B, ...) queries.
        seed: the key, a non-negative integer, or ``None``.

    Returns:
        B integers in ``[0, 2**63)``.

    """
    key = check_seed(seed)
    if key is None:
        key = secrets.randbits(63)
    x = check_tensor(x, "x")
    rows = x.detach().cpu().contiguous().reshape(x.shape[0], math.prod(x.shape[1:]))
    data = rows.view(torch.uint8).numpy() if rows.numel() else rows.numpy()
    prefix = key.to_bytes(16, "little") + str(x.dtype).encode()
    return [
        int.from_bytes(hashlib.blake2b(prefix + row.tobytes(), digest_size=8).digest(), "little")
        >> 1
        for row in data
    ]


def row_generators(x: Tensor, seed: int | None) -> list[torch.Generator]:
    """One CPU generator per input row, seeded by :func:`row_seeds`."""
    return [torch.Generator().manual_seed(value) for value in row_seeds(x, seed)]
