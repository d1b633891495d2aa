"""The standard robustness evaluation: a cascade of diverse attacks, then the masking checks.

Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack): APGD with the cross-entropy, APGD-T with the
targeted DLR loss against the most likely other classes, the targeted FAB attack, and the
black-box Square attack, each run only on the points that every attack before it left
robust. A point counts as robust only if all of them fail; which attack broke it is
recorded per point. Beside it run the gradient-masking checks of
:mod:`vulnscope.evaluate.masking`; those that fire come back as warnings in the result.

The evaluation is made of chunks (:func:`~vulnscope.evaluate.cascade_chunk`, one
:class:`~vulnscope.evaluate.CascadeChunk` each) joined by :func:`merge_cascade_chunks`:
the same merge whether the chunks ran here, on the ranks of a ``torchrun`` group, or in an
audit that checkpoints them as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import (
    check_bool,
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
    check_real,
    check_seed,
)
from vulnscope.attacks import Attack
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate._chunks import map_chunks
from vulnscope.evaluate.cascade import ChunkRunner, run_cascade_chunk
from vulnscope.evaluate.cascade_attacks import DEFAULT_CASCADE, check_cascade
from vulnscope.evaluate.masking import (
    MaskingCheck,
    MaskingSymptoms,
    check_black_box_gap,
    check_single_step_gap,
)
from vulnscope.evaluate.pieces import CascadeBudget, CascadeChunk, StageReport
from vulnscope.models.state import preserved_model_state

__all__ = [
    "StandardEvaluation",
    "StandardEvaluationCurve",
    "merge_cascade_chunks",
    "standard_evaluation",
    "standard_evaluation_curve",
]


@dataclass(frozen=True)
class StandardEvaluation:
    """The result of :func:`standard_evaluation` at one budget.

    Attributes:
        robust_accuracy: fraction of points classified correctly and broken by no attack.
        clean_accuracy: fraction classified correctly without perturbation.
        x_adv: (N, ...) the adversarial example of each broken point, ``x`` elsewhere;
            inside the eps-ball and the bounds. ``None`` when the evaluation was merged
            from chunks read back from JSON (checkpoints keep no examples).
        broken_by: per point, the name of the attack that broke it, ``"clean"`` for a
            point misclassified without perturbation, ``None`` for a robust point.
        robust: (N,) bool, the points no attack broke.
        norm: the threat model's norm.
        eps: the budget.
        stages: one :class:`StageReport` per attack, in cascade order.
        checks: every gradient-masking check that ran.
        warnings: the messages of the triggered checks.
        certified: (N,) bool, the points a certificate proved robust, so that no attack
            ran on them (:func:`~vulnscope.evaluate.adaptive_evaluation`); ``None`` when
            no certificate was tried.

    """

    robust_accuracy: float
    clean_accuracy: float
    x_adv: Tensor | None
    broken_by: tuple[str | None, ...]
    robust: Tensor
    norm: str
    eps: float
    stages: tuple[StageReport, ...]
    checks: tuple[MaskingCheck, ...]
    warnings: tuple[str, ...]
    certified: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the tensors); ``certified`` is a count or None."""
        counts: dict[str, int] = {}
        for name in self.broken_by:
            if name is not None:
                counts[name] = counts.get(name, 0) + 1
        return {
            "norm": self.norm,
            "eps": self.eps,
            "robust_accuracy": self.robust_accuracy,
            "clean_accuracy": self.clean_accuracy,
            "broken_by": counts,
            "stages": [stage.to_dict() for stage in self.stages],
            "checks": {check.name: check.triggered for check in self.checks},
            "warnings": list(self.warnings),
            "certified": None if self.certified is None else int(self.certified.sum()),
        }


@dataclass(frozen=True)
class StandardEvaluationCurve:
    """:func:`standard_evaluation` at several budgets.

    Attributes:
        epsilons: (E,) the budgets, increasing.
        accuracy: (E,) robust accuracy at each.
        evaluations: one :class:`StandardEvaluation` per budget.

    """

    epsilons: Tensor
    accuracy: Tensor
    evaluations: tuple[StandardEvaluation, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "epsilons": [float(e) for e in self.epsilons],
            "robust_accuracy": [float(a) for a in self.accuracy],
            "evaluations": [evaluation.to_dict() for evaluation in self.evaluations],
        }


def merge_cascade_chunks(chunks: Sequence[CascadeChunk]) -> StandardEvaluationCurve:
    """The evaluation of the points of ``chunks``, joined in the order given.

    Per point (``broken_by``, ``robust``, ``x_adv``) the chunks are concatenated; per
    attack the counts (and seconds) are summed; the clean-input masking symptoms are
    joined (:meth:`~vulnscope.evaluate.masking.MaskingSymptoms.merged`: flags by OR,
    gradient counts by sum) and the black-box and single-step checks read the joined
    counts, so each finding is stated once for the whole set. Accuracies are exact
    ratios of integer counts: the result is the same, bit for bit, however the chunks
    were spread over processes, as long as they come in chunk order.

    Args:
        chunks: the chunks in index order (chunk ``k`` holds points ``[k B, (k + 1) B)``),
            all of one cascade (norm, attacks, budgets); computed here or read back with
            :meth:`CascadeChunk.from_json`.

    Returns:
        :class:`StandardEvaluationCurve` over the ``N = sum(chunk.samples)`` points. Each
        evaluation's ``x_adv`` (N, ...) is the chunks' examples joined, or ``None`` when
        any chunk holds none (read back from JSON without them).

    Raises:
        InvalidArgumentError: no chunks, or chunks of different cascades.

    """
    if not chunks:
        raise InvalidArgumentError("chunks must hold at least one CascadeChunk, got none")
    first = chunks[0]
    for index, chunk in enumerate(chunks):
        for field in ("norm", "attacks", "black_box", "epsilons"):
            if getattr(chunk, field) != getattr(first, field):
                raise InvalidArgumentError(
                    f"chunks must come from one cascade: chunks[{index}].{field} is "
                    f"{getattr(chunk, field)!r}, chunks[0].{field} is {getattr(first, field)!r}"
                )
    n = sum(chunk.samples for chunk in chunks)
    symptoms = MaskingSymptoms.merged([chunk.symptoms for chunk in chunks])
    clean_accuracy = sum(chunk.correct for chunk in chunks) / n
    evaluations = tuple(
        _merge_budget(
            [chunk.budgets[position] for chunk in chunks],
            norm=first.norm,
            black_box=first.black_box,
            symptoms=symptoms,
            clean_accuracy=clean_accuracy,
        )
        for position in range(len(first.budgets))
    )
    return StandardEvaluationCurve(
        epsilons=torch.tensor(first.epsilons, dtype=torch.float64),
        accuracy=torch.tensor([e.robust_accuracy for e in evaluations], dtype=torch.float64),
        evaluations=evaluations,
    )


def _merge_budget(
    parts: Sequence[CascadeBudget],
    *,
    norm: str,
    black_box: tuple[bool, ...],
    symptoms: MaskingSymptoms,
    clean_accuracy: float,
) -> StandardEvaluation:
    """One budget's evaluation from each chunk's outcome at it, in chunk order."""
    robust_flags = [flag for part in parts for flag in part.robust]
    held = [part.x_adv for part in parts]
    x_adv = torch.cat([x for x in held if x is not None]) if None not in held else None
    device = x_adv.device if x_adv is not None else None
    reports = []
    for position, name in enumerate(stage.name for stage in parts[0].stages):
        stages = [part.stages[position] for part in parts]
        reports.append(
            StageReport(
                name,
                attacked=sum(stage.attacked for stage in stages),
                broken=sum(stage.broken for stage in stages),
                forward_evals=sum(stage.forward_evals for stage in stages),
                gradient_evals=sum(stage.gradient_evals for stage in stages),
                seconds=sum(stage.seconds for stage in stages),
            )
        )
    checks = symptoms.checks()
    white_box_done = False
    for is_black_box, report in zip(black_box, reports, strict=True):
        if is_black_box and white_box_done:
            checks.append(check_black_box_gap(report.broken, report.attacked, report.name))
        white_box_done |= not is_black_box
    if all(part.single_step_broken is not None for part in parts):
        broken = [flag for part in parts for flag in part.single_step_broken or ()]
        attacked = [flag for part in parts for flag in part.single_step_attacked or ()]
        checks.append(check_single_step_gap(torch.tensor(broken), ~torch.tensor(attacked), "FGSM"))
    certified = None
    if all(part.certified is not None for part in parts):
        flags = [flag for part in parts for flag in part.certified or ()]
        certified = torch.tensor(flags, dtype=torch.bool, device=device)
    return StandardEvaluation(
        robust_accuracy=sum(robust_flags) / len(robust_flags),
        clean_accuracy=clean_accuracy,
        x_adv=x_adv,
        broken_by=tuple(name for part in parts for name in part.broken_by),
        robust=torch.tensor(robust_flags, dtype=torch.bool, device=device),
        norm=norm,
        eps=parts[0].eps,
        stages=tuple(reports),
        checks=tuple(checks),
        warnings=tuple(check.message for check in checks if check.triggered),
        certified=certified,
    )


def standard_evaluation_curve(
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
    batch_size: int | None = None,
    on_budget: Callable[[float], None] | None = None,
    shard: bool = True,
) -> StandardEvaluationCurve:
    """:func:`standard_evaluation` at several budgets, each starting where the last ended.

    An adversarial example inside a ball lies inside every larger ball, so a point broken
    at one budget stays broken (by the same example) at the larger ones, and only the
    points still robust are attacked again.

    The points are evaluated in fixed chunks of ``batch_size`` by index (chunk ``k``
    holds points ``[k B, (k + 1) B)``), each by :func:`~vulnscope.evaluate.cascade_chunk`
    (every attack call seeing one chunk's points only, the masking symptoms measured per
    chunk), so a point's result depends on its chunk and the seed, never on which process
    ran it; :func:`merge_cascade_chunks` joins the chunks in index order. Under
    ``torchrun`` (or any initialised ``torch.distributed`` group of several ranks) with
    ``shard``, the chunks are spread over the ranks, which exchange them, and every rank
    returns the whole evaluation, equal field by field to one process's (the stages'
    ``seconds`` are then summed over the ranks). Give a ``batch_size`` for the ranks to
    share.

    Args:
        model: maps inputs (N, ...) to logits (N, C).
        x: inputs (N, ...) inside ``bounds``.
        y: labels (N,).
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets, each > 0, any order (the result is sorted).
        seed: seed of every attack.
        attacks: the cascade, in order: names from
            :data:`~vulnscope.evaluate.CASCADE_ATTACKS` or configured attacks (see
            :func:`~vulnscope.evaluate.check_cascade`).
        n_target_classes: target classes of the targeted attacks.
        bounds: input bounds.
        batch_size: points per chunk; ``None`` for one chunk of all the points.
        on_budget: called with each budget as each chunk this rank runs finishes it (for
            progress: once per chunk and budget).
        shard: share the chunks among the ranks of a ``torch.distributed`` process group
            (joining the one ``torchrun`` describes); False runs every chunk here, as a
            caller that shares its own work out passes.

    Returns:
        :class:`StandardEvaluationCurve`.

    """
    return evaluate_in_chunks(
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
        batch_size=batch_size,
        on_budget=on_budget,
        shard=shard,
    )


def evaluate_in_chunks(
    run_chunk: ChunkRunner,
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
    batch_size: int | None,
    on_budget: Callable[[float], None] | None,
    shard: bool,
) -> StandardEvaluationCurve:
    """Validate a cascade's arguments, run ``run_chunk`` on each chunk (sharded), merge.

    The one loop of :func:`standard_evaluation_curve` and
    :func:`~vulnscope.evaluate.adaptive_evaluation_curve`, which differ in ``run_chunk``.
    """
    model = check_model(model)
    norm = check_norm(norm, allowed=("linf", "l2"))
    budgets = sorted(set(check_epsilons(epsilons)))
    if not budgets or budgets[0] <= 0:
        raise InvalidArgumentError(f"epsilons must be > 0, got {budgets}")
    seed = check_seed(seed) or 0
    stages = check_cascade(attacks, norm)
    shard = check_bool(shard, "shard")
    n_target_classes = check_int(n_target_classes, "n_target_classes")
    bounds = check_bounds(bounds)
    x = check_inputs(x, bounds=bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    size = max(x.shape[0], 1) if batch_size is None else check_int(batch_size, "batch_size")
    check_model_matches_inputs(model, x)
    # Bad labels are refused here, on every rank alike, rather than by the rank whose
    # chunk holds them while the others wait for its piece.
    with preserved_model_state(model), torch.no_grad():
        check_labels_in_range(y, check_logits(model(x[:1]), 1).shape[1])
    chunks = torch.arange(x.shape[0], device=x.device).split(size)

    def compute(k: int) -> CascadeChunk:
        rows = chunks[k]
        return run_chunk(
            model,
            x[rows],
            y[rows],
            norm=norm,
            epsilons=budgets,
            seed=seed,
            stages=stages,
            n_target_classes=n_target_classes,
            bounds=bounds,
            on_budget=on_budget,
        )

    pieces = map_chunks(
        len(chunks), compute, decode=CascadeChunk.from_json, shard=shard, device=x.device
    )
    return merge_cascade_chunks(pieces)


def standard_evaluation(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    eps: float,
    seed: int = 0,
    attacks: Sequence[str | Attack] = DEFAULT_CASCADE,
    n_target_classes: int = 9,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    shard: bool = True,
) -> StandardEvaluation:
    """Robust accuracy of ``model`` at ``eps`` under the standard cascade of attacks.

    By default AutoAttack's standard version (Croce and Hein 2020): APGD-CE, APGD-T
    (targeted DLR against the ``n_target_classes`` most likely other classes), FAB-T, and
    Square with 5000 queries, each run only on the points still robust. Then FGSM runs
    on the points left robust: a single step breaking what the iterative attacks missed
    is a masking symptom (and the points it breaks count as broken). The other checks of
    :mod:`vulnscope.evaluate.masking` run on the clean inputs, chunk by chunk. Every
    adversarial example is re-checked on the model before it is counted.

    Args:
        model: maps inputs (N, ...) to logits (N, C); usually an ``nn.Module`` in eval
            mode (its state is left as found).
        x: inputs (N, ...) inside ``bounds``. Never modified.
        y: labels (N,).
        norm: ``"linf"`` or ``"l2"``.
        eps: the budget, > 0.
        seed: seed of every attack; the same seed gives the same result.
        attacks: the cascade, in order: names from :data:`~vulnscope.evaluate.CASCADE_ATTACKS`
            (``"apgd-ce"``, ``"apgd-t"``, ``"fab-t"``, ``"square"``, ``"apgd-dlr"``,
            ``"fab"``, ``"pgd"``, ``"fgsm"``, ``"deepfool"``, ``"cw"``) or configured
            :class:`~vulnscope.attacks.Attack` objects in ``norm``, whose ``eps`` is
            replaced by the budget (a targeted one runs once per target class).
        n_target_classes: target classes of the targeted attacks (at most C - 1).
        bounds: input bounds.
        batch_size: points per chunk (each attack call sees one chunk's points);
            ``None`` for one chunk of all the points.
        shard: under ``torchrun``, share the chunks among the ranks; every rank gets the
            whole result, the same as one process's (see
            :func:`standard_evaluation_curve`).

    Returns:
        :class:`StandardEvaluation`: ``robust_accuracy``, ``x_adv``, ``broken_by``,
        ``warnings`` and the per-attack ``stages``.

    Example:
        >>> import torch
        >>> from vulnscope.evaluate import standard_evaluation
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(6, 1, 2, 2), torch.randint(0, 3, (6,))
        >>> rep = standard_evaluation(model, x, y, eps=0.1, attacks=["apgd-ce"])
        >>> len(rep.broken_by) == 6 and 0.0 <= rep.robust_accuracy <= 1.0
        True

    """
    check_real(eps, "eps", minimum=0.0, exclusive=True)
    curve = standard_evaluation_curve(
        model,
        x,
        y,
        norm=norm,
        epsilons=[eps],
        seed=seed,
        attacks=attacks,
        n_target_classes=n_target_classes,
        bounds=bounds,
        batch_size=batch_size,
        shard=shard,
    )
    return curve.evaluations[0]
