"""The minimal adversarial perturbations of one chunk of points: the piece of a distribution.

Moosavi-Dezfooli, Fawzi and Frossard (2016), "DeepFool: a simple and accurate method to
fool deep neural networks": the size of the smallest perturbation that changes each
decision. :func:`minimal_chunk` finds it on one chunk of points with one or more minimal
attacks (each point keeps the smallest found) and returns a :class:`MinimalChunk`, which
is exchanged between ranks or checkpointed as JSON and joined with the others by
:func:`vulnscope.evaluate.minimal.merge_minimal_chunks`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from vulnscope.evaluate.transfer import predicted_class

__all__ = ["CLEAN", "MinimalChunk", "attack_names", "check_minimal_attacks", "minimal_chunk"]

CLEAN = "clean"
"""``found_by`` of a point the model misclassifies without any perturbation."""


@dataclass(frozen=True)
class MinimalChunk:
    """The smallest perturbation found for each of a chunk's B points.

    Everything but the adversarial examples is JSON-safe (:meth:`to_json`,
    :meth:`from_json`, an exact round trip; ``inf`` is written ``null``).

    Attributes:
        norm: the norm of ``norms``.
        attacks: the attacks' names, in the order they ran.
        norms: (B,) size of the smallest adversarial perturbation found; 0 for a clean
            mistake, ``inf`` where no attack found one.
        found_by: (B,) the attack that found it, :data:`CLEAN` for a clean mistake,
            ``None`` where none did.
        clean_correct: (B,) the model classifies the unperturbed point correctly.
        seconds: the chunk's wall time.
        x_adv: (B, ...) the smallest adversarial example found, the point itself where
            none; ``None`` for a chunk read back from JSON (it is not serialised).

    """

    norm: str
    attacks: tuple[str, ...]
    norms: tuple[float, ...]
    found_by: tuple[str | None, ...]
    clean_correct: tuple[bool, ...]
    seconds: float
    x_adv: Tensor | None = dataclasses.field(default=None, compare=False, repr=False)

    def tensors(self) -> tuple[Tensor, ...]:
        """``(x_adv,)`` when the examples are held, else empty."""
        return () if self.x_adv is None else (self.x_adv,)

    def to_json(self) -> dict[str, Any]:
        """The chunk as strings, numbers, booleans, None and lists (no ``x_adv``)."""
        return {
            "norm": self.norm,
            "attacks": list(self.attacks),
            "norms": [value if math.isfinite(value) else None for value in self.norms],
            "found_by": list(self.found_by),
            "clean_correct": list(self.clean_correct),
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], tensors: Sequence[Tensor] = ()) -> MinimalChunk:
        """The chunk :meth:`to_json` wrote, with ``tensors`` (:meth:`tensors`) if given.

        Raises:
            InvalidArgumentError: ``data`` is not a chunk's JSON, or ``tensors`` holds
                more than the one ``x_adv``.

        """
        if len(tensors) > 1:
            raise InvalidArgumentError(f"tensors must hold x_adv or nothing, got {len(tensors)}")
        try:
            return cls(
                norm=str(data["norm"]),
                attacks=tuple(str(name) for name in data["attacks"]),
                norms=tuple(math.inf if v is None else float(v) for v in data["norms"]),
                found_by=tuple(data["found_by"]),
                clean_correct=tuple(bool(flag) for flag in data["clean_correct"]),
                seconds=float(data["seconds"]),
                x_adv=tensors[0] if tensors else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"data must be a MinimalChunk's to_json(), got one that fails with {error!r}"
            ) from None


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
