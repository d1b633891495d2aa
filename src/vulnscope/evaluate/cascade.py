"""The standard cascade on one chunk of points at every budget.

Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack): each attack runs only on the points every
attack before it left robust, and a point broken at one budget stays broken (by the same
example) at the larger ones. :func:`cascade_chunk` runs that cascade on one chunk of
points and returns a :class:`~vulnscope.evaluate.pieces.CascadeChunk`: per point and
budget which attack broke it, per attack the counts, and the raw masking symptoms of the
chunk's clean inputs. Chunks are exchanged between ranks or checkpointed as JSON, and
:func:`vulnscope.evaluate.standard.merge_cascade_chunks` joins them into one evaluation.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

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
from vulnscope.evaluate.pieces import (
    CLEAN,
    SINGLE_STEP_CHECK,
    CascadeBudget,
    CascadeChunk,
    StageReport,
)
from vulnscope.models.state import preserved_model_state

__all__ = ["cascade_chunk"]


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
    return checked_chunk(
        run_cascade_chunk,
        model,
        x,
        y,
        norm=norm,
        epsilons=epsilons,
        seed=seed,
        attacks=attacks,
        n_target_classes=n_target_classes,
        bounds=bounds,
        on_budget=on_budget,
    )


class ChunkRunner(Protocol):
    """Runs a cascade on one chunk of validated points: :func:`run_cascade_chunk`'s signature."""

    def __call__(
        self,
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
    ) -> CascadeChunk: ...


def checked_chunk(
    run: ChunkRunner,
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilons: Sequence[float],
    seed: int,
    attacks: Sequence[str | Attack],
    n_target_classes: int,
    bounds: tuple[float, float],
    on_budget: Callable[[float], None] | None,
) -> CascadeChunk:
    """Validate one chunk's arguments, then ``run`` it (the standard or adaptive cascade)."""
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
    return run(
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
