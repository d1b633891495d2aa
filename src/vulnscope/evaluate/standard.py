"""The standard robustness evaluation: a cascade of diverse attacks, then the masking checks.

Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack): APGD with the cross-entropy, APGD-T with the
targeted DLR loss against the most likely other classes, the targeted FAB attack, and the
black-box Square attack, each run only on the points that every attack before it left
robust. A point counts as robust only if all of them fail; which attack broke it is
recorded per point. Beside it run the gradient-masking checks of
:mod:`vulnscope.evaluate.masking`; those that fire come back as warnings in the result.
"""

from __future__ import annotations

import time
import warnings
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
from vulnscope.attacks import APGD, FAB, FGSM, PGD, Attack, CarliniWagner, DeepFool, Square
from vulnscope.distributed import Sharding
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate.masking import (
    MaskingCheck,
    check_black_box_gap,
    check_gradients,
    check_outputs,
    check_single_step_gap,
)
from vulnscope.models.state import preserved_model_state

__all__ = [
    "CASCADE_ATTACKS",
    "DEFAULT_CASCADE",
    "CascadeAttack",
    "StageReport",
    "StandardEvaluation",
    "StandardEvaluationCurve",
    "check_cascade",
    "standard_evaluation",
    "standard_evaluation_curve",
]

CLEAN = "clean"
"""``broken_by`` of a point the model misclassifies without any perturbation."""


@dataclass(frozen=True)
class CascadeAttack:
    """One attack of the cascade, by name.

    Attributes:
        name: how reports name it, e.g. ``"APGD-T"``.
        build: ``(norm, eps, seed, num_classes) -> Attack`` at the budget ``eps``.
        targeted: run once per target class: the 2nd, 3rd, ... most likely class at the
            clean input, each time on the points still robust. As in AutoAttack, a run
            breaks a point it sends to any class but the true one, the target or not.
        black_box: uses the model's outputs only (its successes after the white-box
            attacks are a gradient-masking symptom).
        norms: the norms it supports.

    """

    name: str
    build: Callable[[str, float, int, int], Attack]
    targeted: bool = False
    black_box: bool = False
    norms: tuple[str, ...] = ("linf", "l2")


def _targeted_loss(num_classes: int) -> str:
    """The targeted DLR needs 4 classes; the C&W margin is its stand-in below that."""
    return "dlr" if num_classes >= 4 else "margin"


CASCADE_ATTACKS: dict[str, CascadeAttack] = {
    "apgd-ce": CascadeAttack(
        "APGD-CE", lambda norm, eps, seed, c: APGD(norm=norm, eps=eps, loss="ce", seed=seed)
    ),
    "apgd-dlr": CascadeAttack(
        "APGD-DLR",
        lambda norm, eps, seed, c: APGD(
            norm=norm, eps=eps, loss="dlr" if c >= 3 else "margin", seed=seed
        ),
    ),
    "apgd-t": CascadeAttack(
        "APGD-T",
        lambda norm, eps, seed, c: APGD(
            norm=norm, eps=eps, loss=_targeted_loss(c), targeted=True, seed=seed
        ),
        targeted=True,
    ),
    "fab": CascadeAttack("FAB", lambda norm, eps, seed, c: FAB(norm=norm, eps=eps, seed=seed)),
    "fab-t": CascadeAttack(
        "FAB-T",
        lambda norm, eps, seed, c: FAB(norm=norm, eps=eps, targeted=True, seed=seed),
        targeted=True,
    ),
    "square": CascadeAttack(
        "Square",
        lambda norm, eps, seed, c: Square(norm=norm, eps=eps, queries=5000, p_init=0.8, seed=seed),
        black_box=True,
    ),
    "pgd": CascadeAttack(
        "PGD-40", lambda norm, eps, seed, c: PGD(norm=norm, eps=eps, steps=40, seed=seed)
    ),
    "fgsm": CascadeAttack("FGSM", lambda norm, eps, seed, c: FGSM(norm=norm, eps=eps)),
    "deepfool": CascadeAttack("DeepFool", lambda norm, eps, seed, c: DeepFool(norm=norm, eps=eps)),
    "cw": CascadeAttack(
        "C&W", lambda norm, eps, seed, c: CarliniWagner(norm=norm, eps=eps, seed=seed)
    ),
}
"""Every attack the cascade can run, by the name ``attacks=`` and ``--attacks`` take."""

DEFAULT_CASCADE: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
"""AutoAttack's standard version (Croce and Hein 2020)."""


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
            "name": self.name, "attacked": self.attacked, "broken": self.broken,
            "forward_evals": self.forward_evals, "gradient_evals": self.gradient_evals,
        }  # fmt: skip


@dataclass(frozen=True)
class StandardEvaluation:
    """The result of :func:`standard_evaluation` at one budget.

    Attributes:
        robust_accuracy: fraction of points classified correctly and broken by no attack.
        clean_accuracy: fraction classified correctly without perturbation.
        x_adv: (N, ...) the adversarial example of each broken point, ``x`` elsewhere;
            inside the eps-ball and the bounds.
        broken_by: per point, the name of the attack that broke it, ``"clean"`` for a
            point misclassified without perturbation, ``None`` for a robust point.
        robust: (N,) bool, the points no attack broke.
        norm: the threat model's norm.
        eps: the budget.
        stages: one :class:`StageReport` per attack, in cascade order.
        checks: every gradient-masking check that ran.
        warnings: the messages of the triggered checks.

    """

    robust_accuracy: float
    clean_accuracy: float
    x_adv: Tensor
    broken_by: tuple[str | None, ...]
    robust: Tensor
    norm: str
    eps: float
    stages: tuple[StageReport, ...]
    checks: tuple[MaskingCheck, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the tensors)."""
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


def _from_instance(attack: Attack, norm: str) -> CascadeAttack:
    """A user's configured attack as a cascade stage: its ``eps`` becomes the budget."""
    if attack.norm != norm:
        raise InvalidArgumentError(
            f"attacks: {attack!r} works in norm {attack.norm!r}, the evaluation in {norm!r}"
        )
    name = type(attack).__name__ + ("-T" if attack.targeted else "")

    def build(norm: str, eps: float, seed: int, num_classes: int) -> Attack:
        return attack.replace(eps=eps)

    return CascadeAttack(
        name, build, targeted=attack.targeted, black_box=attack.gradient_free, norms=(norm,)
    )


def check_cascade(attacks: Any, norm: str) -> list[CascadeAttack]:
    """The cascade ``attacks`` describes, validated.

    Each entry is a name from :data:`CASCADE_ATTACKS` (the standard configurations) or a
    configured :class:`~vulnscope.attacks.Attack` in the evaluation's norm, whose ``eps``
    is replaced by each budget (a targeted one runs once per target class).
    """
    if isinstance(attacks, str) or not isinstance(attacks, Sequence):
        raise InvalidTypeError(
            f"attacks must be a sequence of names from {sorted(CASCADE_ATTACKS)} or attacks, "
            f"got {type(attacks).__name__}"
        )
    if not attacks:
        raise InvalidArgumentError("attacks must name at least one attack, got an empty list")
    chosen: list[CascadeAttack] = []
    for entry in attacks:
        if isinstance(entry, Attack):
            spec = _from_instance(entry, norm)
        elif isinstance(entry, str) and entry.lower() in CASCADE_ATTACKS:
            spec = CASCADE_ATTACKS[entry.lower()]
        else:
            raise InvalidArgumentError(
                f"attacks: unknown attack {entry!r}; choose from {sorted(CASCADE_ATTACKS)} "
                "or pass a configured vulnscope Attack"
            )
        if norm not in spec.norms:
            raise InvalidArgumentError(
                f"attacks: {entry!r} does not support norm {norm!r} (it supports {spec.norms})"
            )
        if any(spec.name == other.name for other in chosen):
            raise InvalidArgumentError(f"attacks: {spec.name!r} is listed twice")
        chosen.append(spec)
    return chosen


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


SINGLE_STEP_CHECK = "FGSM (check)"
"""``broken_by`` of a point only the single-step masking check broke."""


def _single_step_check_runs(stages: list[CascadeAttack]) -> bool:
    """FGSM checks the survivors of a cascade with an iterative white-box attack."""
    return any(not spec.black_box and spec.name != "FGSM" for spec in stages)


@dataclass(frozen=True)
class _ChunkOutcome:
    """One chunk's cascade at one budget: the per-point results and each stage's counts.

    ``single_step`` holds the points the FGSM check broke and those it attacked, (B,)
    each, when it ran.
    """

    broken_by: list[str | None]
    x_adv: Tensor
    robust: Tensor
    reports: list[StageReport]
    single_step: tuple[Tensor, Tensor] | None


def _cascade(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    clean_logits: Tensor,
    *,
    norm: str,
    eps: float,
    stages: list[CascadeAttack],
    seed: int,
    n_target_classes: int,
    bounds: tuple[float, float],
    start_broken_by: list[str | None],
    start_x_adv: Tensor,
) -> _ChunkOutcome:
    """One budget of the cascade on one chunk, from the points broken at a smaller one.

    Every attack call sees this chunk's points only.
    """
    num_classes = clean_logits.shape[1]
    broken_by = list(start_broken_by)
    x_adv = start_x_adv.clone()
    robust = torch.tensor([name is None for name in broken_by], device=x.device)
    targets_all = _target_ranks(clean_logits, min(n_target_classes, num_classes - 1))
    reports = []
    for spec in stages:
        attack = spec.build(norm, eps, seed, num_classes).replace(bounds=bounds)
        started = time.perf_counter()
        broken, attacked, forward, gradient = _run_stage(
            attack, model, x, y, targets_all if spec.targeted else None, robust, x_adv
        )
        for index in broken.nonzero()[:, 0].tolist():
            broken_by[index] = spec.name
        robust &= ~broken
        reports.append(
            StageReport(
                spec.name, attacked, int(broken.sum()), forward, gradient,
                time.perf_counter() - started,
            )
        )  # fmt: skip
    single_step = None
    if _single_step_check_runs(stages):
        # The single-step check: FGSM on the points every attack left robust.
        fgsm = FGSM(norm=norm, eps=eps, bounds=bounds)
        before = robust.clone()
        broken, _, _, _ = _run_stage(fgsm, model, x, y, None, robust, x_adv)
        for index in broken.nonzero()[:, 0].tolist():
            broken_by[index] = SINGLE_STEP_CHECK
        robust &= ~broken
        single_step = (broken, before)
    with preserved_model_state(model), torch.no_grad():
        final_correct = check_logits(model(x_adv), x.shape[0]).argmax(1) == y
    # A last look at the points no attack claimed: robust means classified correctly at
    # the x_adv the report returns (a randomised model can disagree with itself here).
    robust &= final_correct
    return _ChunkOutcome(broken_by, x_adv, robust, reports, single_step)


def _merge_chunks(
    outcomes: list[tuple[Tensor, _ChunkOutcome]],
    x: Tensor,
    y: Tensor,
    clean_logits: Tensor,
    *,
    norm: str,
    eps: float,
    stages: list[CascadeAttack],
    fixed_checks: list[MaskingCheck],
    sharding: Sharding,
) -> StandardEvaluation:
    """One budget's evaluation of the whole set from its chunks' outcomes.

    ``outcomes`` pairs each of this rank's chunks (its sample indices) with its outcome;
    the other ranks' chunks arrive through ``sharding``, so every rank returns the same
    evaluation.
    """
    n = x.shape[0]
    names = [CLEAN, *(spec.name for spec in stages), SINGLE_STEP_CHECK]
    owned = torch.zeros(n, dtype=torch.bool, device=x.device)
    codes = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    x_adv = x.detach().clone()
    robust = torch.zeros(n, dtype=torch.bool, device=x.device)
    single_step = torch.zeros(2, n, dtype=torch.bool, device=x.device)
    counts = torch.zeros(len(stages), 4, dtype=torch.int64, device=x.device)
    seconds = torch.zeros(len(stages), dtype=torch.float64, device=x.device)
    for rows, outcome in outcomes:
        owned[rows] = True
        codes[rows] = torch.tensor(
            [-1 if name is None else names.index(name) for name in outcome.broken_by],
            dtype=torch.int64, device=x.device,
        )  # fmt: skip
        x_adv[rows] = outcome.x_adv
        robust[rows] = outcome.robust
        if outcome.single_step is not None:
            single_step[:, rows] = torch.stack(outcome.single_step)
        for index, report in enumerate(outcome.reports):
            counts[index] += torch.tensor(
                [report.attacked, report.broken, report.forward_evals, report.gradient_evals],
                device=x.device,
            )
            seconds[index] += report.seconds
    codes, x_adv, robust = (sharding.gather_rows(t, owned) for t in (codes, x_adv, robust))
    single_step = sharding.gather_rows(single_step.T, owned).T
    counts, seconds = sharding.sum(counts), sharding.sum(seconds)
    reports = []
    for spec, row, time_spent in zip(stages, counts.tolist(), seconds.tolist(), strict=True):
        attacked, hits, forward, gradient = row
        reports.append(StageReport(spec.name, attacked, hits, forward, gradient, time_spent))
    checks = list(fixed_checks)
    white_box_done = False
    for spec, report in zip(stages, reports, strict=True):
        if spec.black_box and white_box_done:
            checks.append(check_black_box_gap(report.broken, report.attacked, spec.name))
        white_box_done |= not spec.black_box
    if _single_step_check_runs(stages):
        broken, before = single_step
        checks.append(check_single_step_gap(broken, ~before, "FGSM"))
    return StandardEvaluation(
        robust_accuracy=float(robust.double().mean()) if robust.numel() else 0.0,
        clean_accuracy=float((clean_logits.argmax(1) == y).double().mean()),
        x_adv=x_adv,
        broken_by=tuple(None if code < 0 else names[code] for code in codes.tolist()),
        robust=robust,
        norm=norm,
        eps=eps,
        stages=tuple(reports),
        checks=tuple(checks),
        warnings=tuple(check.message for check in checks if check.triggered),
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
    holds points ``[k B, (k + 1) B)``), each attack call seeing one chunk's points only,
    so a point's result depends on its chunk and the seed, never on which process ran
    it. Under ``torchrun`` (or any initialised ``torch.distributed`` group of several
    ranks) with ``shard``, the chunks are spread over the ranks, and every rank returns
    the whole evaluation, equal field by field to one process's (the stages' ``seconds``
    are then summed over the ranks). Give a ``batch_size`` for the ranks to share.

    Args:
        model: maps inputs (N, ...) to logits (N, C).
        x: inputs (N, ...) inside ``bounds``.
        y: labels (N,).
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets, each > 0, any order (the result is sorted).
        seed: seed of every attack.
        attacks: the cascade, in order: names from :data:`CASCADE_ATTACKS` or configured
            attacks (see :func:`check_cascade`).
        n_target_classes: target classes of the targeted attacks.
        bounds: input bounds.
        batch_size: points per chunk; ``None`` for one chunk of all the points.
        on_budget: called with each budget once its evaluation is done (for progress).
        shard: share the chunks among the ranks of a ``torch.distributed`` process group
            (joining the one ``torchrun`` describes); False runs every chunk here, as a
            caller that shares its own work out passes.

    Returns:
        :class:`StandardEvaluationCurve`.

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
    with preserved_model_state(model), torch.no_grad():
        clean_logits = check_logits(model(x), x.shape[0])
    check_labels_in_range(y, clean_logits.shape[1])
    correct = clean_logits.argmax(1) == y
    fixed_checks = check_outputs(model, x)
    gradient_check = check_gradients(model, x, y, correct)
    if gradient_check is not None:
        fixed_checks.append(gradient_check)
    chunks = torch.arange(x.shape[0], device=x.device).split(size)
    sharding = Sharding(len(chunks), shard=shard, device=x.device)
    mine = [chunks[k] for k in sharding.pieces]
    # Each chunk's points and adversarial examples so far (broken at a smaller budget).
    state = [
        ([None if ok else CLEAN for ok in correct[rows].tolist()], x[rows].detach().clone())
        for rows in mine
    ]
    evaluations = []
    with warnings.catch_warnings():
        # Reported once, as a masking check, rather than by every attack call.
        warnings.filterwarnings("ignore", message="the model's outputs look like probabilities")
        for eps in budgets:
            outcomes = []
            for position, rows in enumerate(mine):
                outcome = _cascade(
                    model, x[rows], y[rows], clean_logits[rows], norm=norm, eps=eps,
                    stages=stages, seed=seed, n_target_classes=n_target_classes,
                    bounds=bounds, start_broken_by=state[position][0],
                    start_x_adv=state[position][1],
                )  # fmt: skip
                state[position] = (outcome.broken_by, outcome.x_adv)
                outcomes.append((rows, outcome))
            evaluations.append(
                _merge_chunks(
                    outcomes, x, y, clean_logits, norm=norm, eps=eps, stages=stages,
                    fixed_checks=fixed_checks, sharding=sharding,
                )
            )  # fmt: skip
            if on_budget is not None:
                on_budget(eps)
    return StandardEvaluationCurve(
        epsilons=torch.tensor(budgets, dtype=torch.float64),
        accuracy=torch.tensor([e.robust_accuracy for e in evaluations], dtype=torch.float64),
        evaluations=tuple(evaluations),
    )


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
    :mod:`vulnscope.evaluate.masking` run on the clean inputs. Every adversarial example
    is re-checked on the model before it is counted.

    Args:
        model: maps inputs (N, ...) to logits (N, C); usually an ``nn.Module`` in eval
            mode (its state is left as found).
        x: inputs (N, ...) inside ``bounds``. Never modified.
        y: labels (N,).
        norm: ``"linf"`` or ``"l2"``.
        eps: the budget, > 0.
        seed: seed of every attack; the same seed gives the same result.
        attacks: the cascade, in order: names from :data:`CASCADE_ATTACKS`
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
        model, x, y, norm=norm, epsilons=[eps], seed=seed, attacks=attacks,
        n_target_classes=n_target_classes, bounds=bounds, batch_size=batch_size, shard=shard,
    )  # fmt: skip
    return curve.evaluations[0]
