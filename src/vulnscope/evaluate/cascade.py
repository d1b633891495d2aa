"""One chunk of the standard cascade at every budget: the piece an evaluation is made of.

Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack): each attack runs only on the points every
attack before it left robust, and a point broken at one budget stays broken (by the same
example) at the larger ones. :func:`cascade_chunk` runs that cascade on one chunk of
points and returns a :class:`CascadeChunk`: per point and budget which attack broke it,
per attack the counts, and the raw masking symptoms of the chunk's clean inputs. Chunks
are exchanged between ranks or checkpointed as JSON (:meth:`CascadeChunk.to_json`), and
:func:`vulnscope.evaluate.standard.merge_cascade_chunks` joins them into one evaluation.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import (
    check_bounds,
    check_epsilons,
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_norm,
    check_seed,
)
from vulnscope.attacks import FGSM, Attack
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate.cascade_attacks import DEFAULT_CASCADE, CascadeAttack, check_cascade
from vulnscope.evaluate.masking import MaskingSymptoms, masking_symptoms
from vulnscope.models.state import preserved_model_state

__all__ = [
    "CLEAN",
    "SINGLE_STEP_CHECK",
    "CascadeBudget",
    "CascadeChunk",
    "StageReport",
    "cascade_chunk",
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
        x_adv: (B, ...) each point's adversarial example, the point itself where none
            was found; ``None`` for a chunk read back from JSON (it is not serialised).

    """

    eps: float
    broken_by: tuple[str | None, ...]
    robust: tuple[bool, ...]
    stages: tuple[StageReport, ...]
    single_step_broken: tuple[bool, ...] | None
    single_step_attacked: tuple[bool, ...] | None
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


def cascade_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    epsilons: Sequence[float],
    seed: int = 0,
    attacks: Sequence[str | Attack] = DEFAULT_CASCADE,
    n_target_classes: int = 9,
    bounds: tuple[float, float] = (0.0, 1.0),
    on_budget: Callable[[float], None] | None = None,
) -> CascadeChunk:
    """The standard cascade on one chunk of points, at every budget.

    The budgets run in increasing order, each starting where the last ended: only the
    points still robust are attacked again. Every attack call sees this chunk's points
    (the chunk is the batch), so the result depends on the points and ``seed`` only. The
    masking symptoms of the clean inputs (probability or randomised outputs, zero or
    non-finite gradients) are measured on the chunk too.

    Args:
        model: maps inputs (B, ...) to logits (B, C); its state is left as found.
        x: the chunk's inputs (B, ...) inside ``bounds``. Never modified.
        y: its labels (B,).
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets, each > 0, any order (the chunk holds them sorted, once each);
            none gives just the clean pass (``correct``).
        seed: seed of every attack.
        attacks: the cascade, in order: names from
            :data:`~vulnscope.evaluate.CASCADE_ATTACKS` or configured attacks (see
            :func:`~vulnscope.evaluate.check_cascade`).
        n_target_classes: target classes of the targeted attacks.
        bounds: input bounds.
        on_budget: called with each budget as the chunk finishes it (for progress).

    Returns:
        :class:`CascadeChunk`, with each budget's ``x_adv`` (B, ...) in memory.

    Example:
        >>> import torch
        >>> from vulnscope.evaluate import cascade_chunk
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(5, 1, 2, 2), torch.randint(0, 3, (5,))
        >>> chunk = cascade_chunk(model, x, y, epsilons=[0.1, 0.2], attacks=["apgd-ce"])
        >>> chunk.epsilons, len(chunk.budgets[0].broken_by)
        ((0.1, 0.2), 5)

    """
    model = check_model(model)
    norm = check_norm(norm, allowed=("linf", "l2"))
    none = isinstance(epsilons, list | tuple) and not epsilons  # the clean pass alone
    budgets = [] if none else sorted(set(check_epsilons(epsilons)))
    if budgets and budgets[0] <= 0:
        raise InvalidArgumentError(f"epsilons must be > 0, got {budgets}")
    bounds = check_bounds(bounds)
    x = check_inputs(x, bounds=bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    check_model_matches_inputs(model, x)
    return run_cascade_chunk(
        model,
        x,
        y,
        norm=norm,
        epsilons=budgets,
        seed=check_seed(seed) or 0,
        stages=check_cascade(attacks, norm),
        n_target_classes=check_int(n_target_classes, "n_target_classes"),
        bounds=bounds,
        on_budget=on_budget,
    )


def run_cascade_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilons: Sequence[float],
    seed: int,
    stages: Sequence[CascadeAttack],
    n_target_classes: int,
    bounds: tuple[float, float],
    on_budget: Callable[[float], None] | None = None,
) -> CascadeChunk:
    """:func:`cascade_chunk` on arguments already validated (``epsilons`` increasing)."""
    started = time.perf_counter()
    with preserved_model_state(model), torch.no_grad():
        clean_logits = check_logits(model(x), x.shape[0])
    check_labels_in_range(y, clean_logits.shape[1])
    correct = clean_logits.argmax(1) == y
    symptoms = (
        masking_symptoms(model, x, y, correct, logits=clean_logits)
        if epsilons
        else MaskingSymptoms(False, False, 0, 0, 0)
    )
    broken_by: tuple[str | None, ...] = tuple(None if ok else CLEAN for ok in correct.tolist())
    x_adv = x.detach().clone()
    outcomes = []
    with warnings.catch_warnings():
        # Reported once, as a masking check, rather than by every attack call.
        warnings.filterwarnings("ignore", message="the model's outputs look like probabilities")
        for eps in epsilons:
            outcome, x_adv = _budget(
                model,
                x,
                y,
                clean_logits,
                norm=norm,
                eps=eps,
                stages=stages,
                seed=seed,
                n_target_classes=n_target_classes,
                bounds=bounds,
                broken_by=broken_by,
                x_adv=x_adv,
            )
            broken_by = outcome.broken_by
            outcomes.append(outcome)
            if on_budget is not None:
                on_budget(eps)
    return CascadeChunk(
        norm=norm,
        attacks=tuple(spec.name for spec in stages),
        black_box=tuple(spec.black_box for spec in stages),
        samples=x.shape[0],
        correct=int(correct.sum()),
        symptoms=symptoms,
        budgets=tuple(outcomes),
        seconds=time.perf_counter() - started,
    )


def _target_ranks(clean_logits: Tensor, count: int) -> list[Tensor]:
    """The 2nd, 3rd, ... most likely classes at the clean inputs: ``count`` tensors (N,)."""
    order = clean_logits.argsort(dim=1, descending=True)
    return [order[:, rank] for rank in range(1, count + 1)]


def _run_stage(
    attack: Attack,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    targets: list[Tensor] | None,
    robust: Tensor,
    x_adv: Tensor,
) -> tuple[Tensor, int, int, int]:
    """Attack a chunk's robust points in one call (per target); record their examples.

    Returns the (B,) mask of newly broken points, points attacked, and the evaluations.
    """
    broken = torch.zeros_like(robust)
    attacked = forward = gradient = 0
    for target in targets if targets is not None else [None]:
        rows = (robust & ~broken).nonzero()[:, 0]
        if target is not None:
            rows = rows[target[rows] != y[rows]]
        if rows.numel() == 0:
            continue
        result = attack(model, x[rows], y[rows], target=None if target is None else target[rows])
        if target is None:
            hit = result.success
        else:  # as AutoAttack: a targeted run breaks a point it sends to any other class
            with preserved_model_state(model), torch.no_grad():
                hit = check_logits(model(result.x_adv), rows.numel()).argmax(1) != y[rows]
            forward += rows.numel()
        x_adv[rows[hit]] = result.x_adv[hit]
        broken[rows[hit]] = True
        attacked += rows.numel()
        forward += result.forward_evals
        gradient += result.gradient_evals
    return broken, attacked, forward, gradient


def _single_step_check_runs(stages: Sequence[CascadeAttack]) -> bool:
    """FGSM checks the survivors of a cascade with an iterative white-box attack."""
    return any(not spec.black_box and spec.name != "FGSM" for spec in stages)


def _budget(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    clean_logits: Tensor,
    *,
    norm: str,
    eps: float,
    stages: Sequence[CascadeAttack],
    seed: int,
    n_target_classes: int,
    bounds: tuple[float, float],
    broken_by: tuple[str | None, ...],
    x_adv: Tensor,
) -> tuple[CascadeBudget, Tensor]:
    """One budget of the cascade on one chunk, from the points broken at a smaller one.

    Returns the budget's outcome and its (B, ...) adversarial examples (also in it).
    """
    num_classes = clean_logits.shape[1]
    names = list(broken_by)
    x_adv = x_adv.clone()
    robust = torch.tensor([name is None for name in names], device=x.device)
    targets_all = _target_ranks(clean_logits, min(n_target_classes, num_classes - 1))
    reports = []
    for spec in stages:
        attack = spec.build(norm, eps, seed, num_classes).replace(bounds=bounds)
        started = time.perf_counter()
        broken, attacked, forward, gradient = _run_stage(
            attack, model, x, y, targets_all if spec.targeted else None, robust, x_adv
        )
        for index in broken.nonzero()[:, 0].tolist():
            names[index] = spec.name
        robust &= ~broken
        seconds = time.perf_counter() - started
        reports.append(
            StageReport(spec.name, attacked, int(broken.sum()), forward, gradient, seconds)
        )
    single_step_broken = single_step_attacked = None
    if _single_step_check_runs(stages):
        # The single-step check: FGSM on the points every attack left robust.
        fgsm = FGSM(norm=norm, eps=eps, bounds=bounds)
        before = robust.clone()
        broken, _, _, _ = _run_stage(fgsm, model, x, y, None, robust, x_adv)
        for index in broken.nonzero()[:, 0].tolist():
            names[index] = SINGLE_STEP_CHECK
        robust &= ~broken
        single_step_broken = tuple(broken.tolist())
        single_step_attacked = tuple(before.tolist())
    with preserved_model_state(model), torch.no_grad():
        final_correct = check_logits(model(x_adv), x.shape[0]).argmax(1) == y
    # A last look at the points no attack claimed: robust means classified correctly at
    # the x_adv the report returns (a randomised model can disagree with itself here).
    robust &= final_correct
    outcome = CascadeBudget(
        eps=float(eps),
        broken_by=tuple(names),
        robust=tuple(robust.tolist()),
        stages=tuple(reports),
        single_step_broken=single_step_broken,
        single_step_attacked=single_step_attacked,
        x_adv=x_adv,
    )
    return outcome, x_adv
