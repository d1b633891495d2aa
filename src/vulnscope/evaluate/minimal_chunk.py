"""The minimal adversarial perturbations of one chunk of points.

Moosavi-Dezfooli, Fawzi and Frossard (2016), "DeepFool: a simple and accurate method to
fool deep neural networks": the size of the smallest perturbation that changes each
decision. :func:`minimal_chunk` finds it on one chunk of points with one or more minimal
attacks (each point keeps the smallest found) and returns a
:class:`~vulnscope.evaluate.pieces.MinimalChunk`, which is exchanged between ranks or
checkpointed as JSON and joined with the others by
:func:`vulnscope.evaluate.minimal.merge_minimal_chunks`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import (
    check_inputs,
    check_labels,
    check_model,
    check_norm,
    describe,
)
from vulnscope.attacks.base import Attack
from vulnscope.attacks.deepfool import DeepFool
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate.pieces import CLEAN, MinimalChunk
from vulnscope.evaluate.transfer import predicted_class

__all__ = ["attack_names", "check_minimal_attacks", "minimal_chunk"]


def attack_names(attacks: Sequence[Attack]) -> tuple[str, ...]:
    """Class names, made unique by their position where two attacks share one."""
    names = [type(attack).__name__ for attack in attacks]
    return tuple(f"{name}[{i}]" if names.count(name) > 1 else name for i, name in enumerate(names))


def check_minimal_attacks(attacks: Any, norm: str) -> list[Attack]:
    """``attacks`` as a list of minimal untargeted attacks in ``norm``; None: DeepFool.

    Raises:
        InvalidTypeError: not an Attack or a non-empty sequence of them.
        InvalidArgumentError: an attack with a fixed budget, targeted, or in another norm.

    """
    if attacks is None:
        return [DeepFool(norm=norm)]
    chosen = [attacks] if isinstance(attacks, Attack) else attacks
    if not isinstance(chosen, Sequence) or not chosen:
        raise InvalidTypeError(
            f"attacks must be an Attack or a non-empty sequence of them, got {describe(attacks)}"
        )
    for i, attack in enumerate(chosen):
        if not isinstance(attack, Attack):
            raise InvalidTypeError(
                f"attacks[{i}] must be a vulnscope Attack, got {describe(attack)}"
            )
        if attack.requires_eps:
            raise InvalidArgumentError(
                f"attacks[{i}] must be a minimal attack (DeepFool, CarliniWagner, FAB, ...), "
                f"got {type(attack).__name__}, which works inside a fixed budget"
            )
        if attack.targeted:
            raise InvalidArgumentError(f"attacks[{i}] must be untargeted")
        if attack.norm != norm:
            raise InvalidArgumentError(
                f"attacks[{i}] must minimise the {norm!r} norm, got {type(attack).__name__} "
                f"with norm={attack.norm!r}"
            )
    return list(chosen)


def minimal_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    attacks: Attack | Sequence[Attack] | None = None,
    norm: str = "l2",
) -> MinimalChunk:
    """The smallest adversarial perturbation of each point of one chunk.

    Each attack runs once (uncapped unless its ``eps`` is set) on the chunk's points the
    model classifies correctly: the chunk is the batch. Each point keeps the smallest
    successful perturbation; the first attack in ``attacks`` wins ties.

    Args:
        model: maps inputs (B, ...) to logits (B, C).
        x: the chunk's inputs (B, ...), inside the attacks' bounds.
        y: its true labels (B,).
        attacks: a minimal untargeted attack or a sequence of them, all in ``norm``;
            default: DeepFool in ``norm``.
        norm: the norm the perturbations are measured in.

    Returns:
        :class:`MinimalChunk`, with ``x_adv`` (B, ...) in memory.

    Example:
        >>> import torch
        >>> from vulnscope.evaluate import minimal_chunk
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(5, 1, 2, 2), torch.randint(0, 3, (5,))
        >>> chunk = minimal_chunk(model, x, y)
        >>> len(chunk.norms), chunk.attacks
        (5, ('DeepFool',))

    """
    model = check_model(model)
    norm = check_norm(norm)
    chosen = check_minimal_attacks(attacks, norm)
    x = check_inputs(x, bounds=chosen[0].bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    return run_minimal_chunk(model, x, y, attacks=chosen, norm=norm)


def run_minimal_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[Attack],
    norm: str,
) -> MinimalChunk:
    """:func:`minimal_chunk` on arguments already validated."""
    started = time.perf_counter()
    correct = predicted_class(model, x) == y
    norms = torch.where(correct, math.inf, 0.0).to(torch.float64)
    best = torch.full_like(norms, -1, dtype=torch.int64)
    x_adv = x.detach().clone()
    rows = correct.nonzero()[:, 0]
    for index, attack in enumerate(attacks if rows.numel() else ()):
        result = attack(model, x[rows], y[rows])
        found = torch.where(result.success, result.norms.double(), math.inf)
        better = found < norms[rows]
        chosen = rows[better]
        norms[chosen] = found[better]
        best[chosen] = index
        x_adv[chosen] = result.x_adv[better]
    names = attack_names(attacks)
    return MinimalChunk(
        norm=norm,
        attacks=names,
        norms=tuple(norms.tolist()),
        found_by=tuple(
            CLEAN if not ok else (names[i] if i >= 0 else None)
            for ok, i in zip(correct.tolist(), best.tolist(), strict=True)
        ),
        clean_correct=tuple(correct.tolist()),
        seconds=time.perf_counter() - started,
        x_adv=x_adv,
    )
