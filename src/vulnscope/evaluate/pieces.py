"""The typed pieces an evaluation is made of: one chunk's result, JSON-safe.

A sharded evaluation (the ranks of a ``torchrun`` group) or a checkpointed one (the
audit) computes its chunks apart and merges them. Each kind has one piece:
:class:`CascadeChunk` for the standard cascade (:func:`~vulnscope.evaluate.cascade_chunk`,
merged by :func:`~vulnscope.evaluate.merge_cascade_chunks`) and :class:`MinimalChunk` for
minimal perturbations (:func:`~vulnscope.evaluate.minimal_chunk`, merged by
:func:`~vulnscope.evaluate.merge_minimal_chunks`). Everything in a piece but its
adversarial examples goes to JSON and back exactly (``to_json``, ``from_json``); the
examples travel beside it as tensors (``tensors``) or, in a checkpoint, not at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate.masking import MaskingSymptoms

__all__ = [
    "CLEAN",
    "SINGLE_STEP_CHECK",
    "CascadeBudget",
    "CascadeChunk",
    "MinimalChunk",
    "StageReport",
]

CLEAN = "clean"
"""``broken_by`` of a point the model misclassifies without any perturbation."""

SINGLE_STEP_CHECK = "FGSM (check)"
"""``broken_by`` of a point only the single-step masking check broke."""


@dataclass(frozen=True)
class StageReport:
    """What one attack of the cascade did.

    Attributes:
        name: the attack's name.
        attacked: points it attacked (robust after every attack before it), summed over
            target classes for a targeted attack.
        broken: points it broke.
        forward_evals: model evaluations, counted per sample.
        gradient_evals: backward passes, counted per sample.
        seconds: time it took, summed over the chunks (and the ranks of a sharded run).

    """

    name: str
    attacked: int
    broken: int
    forward_evals: int
    gradient_evals: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, without the wall time (so that equal runs give equal dicts)."""
        return {
            "name": self.name,
            "attacked": self.attacked,
            "broken": self.broken,
            "forward_evals": self.forward_evals,
            "gradient_evals": self.gradient_evals,
        }


@dataclass(frozen=True)
class CascadeBudget:
    """One chunk's cascade at one budget.

    Attributes:
        eps: the budget.
        broken_by: (B,) per point, the attack that broke it (at this budget or a smaller
            one), :data:`CLEAN` for a clean mistake, ``None`` for a point none broke.
        robust: (B,) per point, broken by no attack and classified correctly at its
            ``x_adv`` (a randomised model can disagree with itself there).
        stages: one :class:`StageReport` per attack, in cascade order.
        single_step_broken: (B,) the points the FGSM check broke; ``None`` when it did
            not run (a cascade without an iterative white-box attack).
        single_step_attacked: (B,) the points it attacked (those every attack left
            robust); ``None`` when it did not run.
        certified: (B,) the points a certificate (CROWN) proved robust at this budget, so
            that no attack ran on them; ``None`` when no certificate was tried (the
            standard cascade).
        x_adv: (B, ...) each point's adversarial example, the point itself where none
            was found; ``None`` for a chunk read back from JSON (it is not serialised).

    """

    eps: float
    broken_by: tuple[str | None, ...]
    robust: tuple[bool, ...]
    stages: tuple[StageReport, ...]
    single_step_broken: tuple[bool, ...] | None
    single_step_attacked: tuple[bool, ...] | None
    certified: tuple[bool, ...] | None = None
    x_adv: Tensor | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CascadeChunk:
    """The cascade on one chunk of B points at every budget: a piece of an evaluation.

    Everything but the adversarial examples is JSON-safe (:meth:`to_json`,
    :meth:`from_json`, an exact round trip), so a chunk can be exchanged between ranks or
    saved in a checkpoint, then merged with the others by
    :func:`~vulnscope.evaluate.merge_cascade_chunks`.

    Attributes:
        norm: the threat model's norm.
        attacks: the cascade's attack names, in order.
        black_box: per attack, whether it uses the model's outputs only.
        samples: B, the chunk's points.
        correct: the points the model classifies correctly without perturbation.
        symptoms: the masking symptoms of the chunk's clean inputs.
        budgets: one :class:`CascadeBudget` per budget, increasing.
        seconds: the chunk's wall time.

    """

    norm: str
    attacks: tuple[str, ...]
    black_box: tuple[bool, ...]
    samples: int
    correct: int
    symptoms: MaskingSymptoms
    budgets: tuple[CascadeBudget, ...]
    seconds: float

    @property
    def epsilons(self) -> tuple[float, ...]:
        """The budgets, increasing."""
        return tuple(budget.eps for budget in self.budgets)

    def tensors(self) -> tuple[Tensor, ...]:
        """The adversarial examples, (B, ...) per budget; empty if they are not held."""
        held = [budget.x_adv for budget in self.budgets]
        return tuple(x for x in held if x is not None) if None not in held else ()

    def to_json(self) -> dict[str, Any]:
        """The chunk as ints, floats, strings, booleans, None and lists (no ``x_adv``)."""
        data = dataclasses.asdict(
            dataclasses.replace(
                self,
                budgets=tuple(dataclasses.replace(budget, x_adv=None) for budget in self.budgets),
            )
        )
        for budget in data["budgets"]:
            del budget["x_adv"]
        return _lists(data)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], tensors: Sequence[Tensor] = ()) -> CascadeChunk:
        """The chunk :meth:`to_json` wrote, with ``tensors`` (:meth:`tensors`) if given.

        Raises:
            InvalidArgumentError: ``data`` is not a chunk's JSON, or ``tensors`` holds
                neither nothing nor one ``x_adv`` per budget.

        """
        try:
            budgets = tuple(
                CascadeBudget(
                    eps=float(budget["eps"]),
                    broken_by=tuple(budget["broken_by"]),
                    robust=tuple(bool(flag) for flag in budget["robust"]),
                    stages=tuple(StageReport(**stage) for stage in budget["stages"]),
                    single_step_broken=_flags(budget["single_step_broken"]),
                    single_step_attacked=_flags(budget["single_step_attacked"]),
                    certified=_flags(budget.get("certified")),
                )
                for budget in data["budgets"]
            )
            chunk = cls(
                norm=str(data["norm"]),
                attacks=tuple(data["attacks"]),
                black_box=tuple(bool(flag) for flag in data["black_box"]),
                samples=int(data["samples"]),
                correct=int(data["correct"]),
                symptoms=MaskingSymptoms(**data["symptoms"]),
                budgets=budgets,
                seconds=float(data["seconds"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"data must be a CascadeChunk's to_json(), got one that fails with {error!r}"
            ) from None
        if not tensors:
            return chunk
        if len(tensors) != len(budgets):
            raise InvalidArgumentError(
                f"tensors must hold one x_adv per budget ({len(budgets)}), got {len(tensors)}"
            )
        return dataclasses.replace(
            chunk,
            budgets=tuple(
                dataclasses.replace(budget, x_adv=x)
                for budget, x in zip(budgets, tensors, strict=True)
            ),
        )


def _lists(value: Any) -> Any:
    """``value`` with every tuple turned into a list, as JSON reads it back."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(item) for item in value]
    return value


def _flags(value: Any) -> tuple[bool, ...] | None:
    return None if value is None else tuple(bool(flag) for flag in value)


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
