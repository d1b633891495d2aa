"""The audit's minimal-perturbation stage, chunk by chunk.

The distribution of the smallest L2 perturbation that changes each decision
(Moosavi-Dezfooli, Fawzi and Frossard 2016): DeepFool's fast linearised steps, then FAB
(Croce and Hein 2020), which projects onto the boundary and keeps the smaller of the two.
Robust accuracy at every L2 budget is this distribution's survival function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vulnscope.attacks import FAB, Attack, DeepFool
from vulnscope.evaluate import minimal_perturbations, plot_minimal_perturbations
from vulnscope.evaluate.minimal import MinimalPerturbations

__all__ = ["MINIMAL_ATTACKS", "merge_minimal_chunks", "minimal_chunk", "minimal_section"]

MINIMAL_ATTACKS = ("deepfool", "fab")
"""The minimal attacks of the full audit; ``--quick`` runs DeepFool alone."""


def _attacks(names: Sequence[str], seed: int) -> list[Attack]:
    chosen: list[Attack] = []
    for name in names:
        chosen.append(DeepFool(norm="l2") if name == "deepfool" else FAB(norm="l2", seed=seed))
    return chosen


def minimal_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[str],
    seed: int,
    batch_size: int | None,
) -> dict[str, Any]:
    """The smallest L2 perturbation of each point of a chunk (x: (B, ...), y: (B,)).

    Returns:
        JSON-ready ``{"norms": [float | None], "found_by": [...], "clean_correct": [...],
        "attacks": [...]}``; ``None`` where no attack broke the point.

    """
    result = minimal_perturbations(
        model,
        x,
        y,
        attacks=_attacks(attacks, seed),
        norm="l2",
        batch_size=batch_size,
        shard=False,  # the audit shares its chunks out itself
    )
    return {
        "norms": [value if math.isfinite(value) else None for value in result.norms.tolist()],
        "found_by": list(result.found_by),
        "clean_correct": result.clean_correct.tolist(),
        "attacks": list(result.attacks),
    }


def merge_minimal_chunks(chunks: Sequence[dict[str, Any]]) -> MinimalPerturbations:
    """The chunks joined into one :class:`MinimalPerturbations` (without the examples)."""
    norms = [math.inf if value is None else value for chunk in chunks for value in chunk["norms"]]
    return MinimalPerturbations(
        norms=torch.tensor(norms, dtype=torch.float64),
        found_by=tuple(name for chunk in chunks for name in chunk["found_by"]),
        clean_correct=torch.tensor([ok for chunk in chunks for ok in chunk["clean_correct"]]),
        x_adv=torch.empty(0),
        norm="l2",
        attacks=tuple(chunks[0]["attacks"]) if chunks else (),
    )


def minimal_section(chunks: Sequence[dict[str, Any]], directory: Path | None) -> dict[str, Any]:
    """The record's ``minimal_perturbations`` section, and its histogram when ``directory``."""
    merged = merge_minimal_chunks(chunks)
    section = merged.to_dict()
    if directory is not None:
        plot_minimal_perturbations(merged, directory / "minimal_perturbations.png")
    return section
