"""Explicit random generators: every stochastic function takes a seed or a generator."""

from __future__ import annotations

import torch

__all__ = ["make_generator", "resolve_generator"]


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
