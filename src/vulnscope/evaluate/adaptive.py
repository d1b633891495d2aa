"""The adaptive evaluation: the standard cascade's attacks, scheduled from what they learn.

Liu et al. (2022), "Practical Evaluation of Adversarial Robustness via Adaptive Auto
Attack" (A³): certified points are not attacked, the targets follow what the first attack
found, hopeless points are discarded, and a random subset run
at full strength checks that the schedule lost nothing (the algorithm is in
:mod:`vulnscope.evaluate.adaptive_chunk`). The result has the standard evaluation's type,
so everything that reads one reads the other; :func:`~vulnscope.evaluate.standard_evaluation`
stays as it is, for figures comparable with published AutoAttack numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor

from vulnscope._validation import (
    check_bool,
    check_real,
)
from vulnscope.attacks import Attack
from vulnscope.evaluate.adaptive_chunk import run_adaptive_chunk
from vulnscope.evaluate.cascade import checked_chunk
from vulnscope.evaluate.cascade_attacks import DEFAULT_CASCADE
from vulnscope.evaluate.pieces import CascadeChunk
from vulnscope.evaluate.standard import (
    StandardEvaluation,
    StandardEvaluationCurve,
    evaluate_in_chunks,
)

__all__ = ["adaptive_chunk", "adaptive_evaluation", "adaptive_evaluation_curve"]


def adaptive_chunk(
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
    certify: bool = True,
    on_budget: Callable[[float], None] | None = None,
) -> CascadeChunk:
    """The adaptive cascade on one chunk of points, at every budget (for the audit's pieces).

    :func:`~vulnscope.evaluate.cascade_chunk`'s counterpart: the same arguments and the
    same piece, merged by :func:`~vulnscope.evaluate.merge_cascade_chunks`.

    Args:
        model: maps inputs (B, ...) to logits (B, C); its state is left as found.
        x: the chunk's inputs (B, ...) inside ``bounds``. Never modified.
        y: its labels (B,).
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets, each > 0, any order (the chunk holds them sorted, once each).
        seed: seed of every attack and every random subset.
        attacks: the cascade (names or configured attacks, as for
            :func:`~vulnscope.evaluate.check_cascade`).
        n_target_classes: target classes of the targeted attacks.
        bounds: input bounds.
        certify: skip the points CROWN certifies (``nn.Module`` models it can read).
        on_budget: called with each budget as the chunk finishes it (for progress).

    Returns:
        :class:`CascadeChunk`, with each budget's ``x_adv`` (B, ...) in memory and the
        points certified at each budget.

    """
    return checked_chunk(
        partial(run_adaptive_chunk, certify_points=check_bool(certify, "certify")),
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


def adaptive_evaluation_curve(
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
    certify: bool = True,
    on_budget: Callable[[float], None] | None = None,
    shard: bool = True,
) -> StandardEvaluationCurve:
    """:func:`adaptive_evaluation` at several budgets, each starting where the last ended.

    A point broken at one budget stays broken at the larger ones, and only the points
    certified at one budget are tried at the next.
    Chunks, sharding and the arguments are as for
    :func:`~vulnscope.evaluate.standard_evaluation_curve`, plus ``certify``.

    Returns:
        :class:`~vulnscope.evaluate.StandardEvaluationCurve`; each evaluation's
        ``certified`` holds the points certified at its budget (``None`` without
        ``certify``).

    """
    return evaluate_in_chunks(
        partial(run_adaptive_chunk, certify_points=check_bool(certify, "certify")),
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


def adaptive_evaluation(
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
    certify: bool = True,
    shard: bool = True,
) -> StandardEvaluation:
    """Robust accuracy of ``model`` at ``eps`` under the adaptive cascade.

    The standard cascade's attacks (AutoAttack's: APGD-CE, APGD-T, FAB-T, Square by
    default), scheduled as A³ (Liu et al. 2022) schedules them
    (:mod:`vulnscope.evaluate.adaptive_chunk`): points IBP or CROWN certifies are not
    attacked; the targeted attack takes its targets in the order the lead attack's best
    iterate ranks them and discards points far from the boundary; the later attacks run on a random
    subset; and a random subset at full strength checks each shortcut, falling back to
    the full attack on every point when the check shows it would lose a point. The
    gradient-masking checks run as in :func:`~vulnscope.evaluate.standard_evaluation`.

    Args:
        model: maps inputs (N, ...) to logits (N, C); usually an ``nn.Module`` in eval
            mode (its state is left as found).
        x: inputs (N, ...) inside ``bounds``. Never modified.
        y: labels (N,).
        norm: ``"linf"`` or ``"l2"``.
        eps: the budget, > 0.
        seed: seed of every attack and random subset; the same seed gives the same result.
        attacks: the cascade, as for :func:`~vulnscope.evaluate.standard_evaluation`: the
            first untargeted white-box attack leads, the first targeted one after it gets
            the target schedule, the rest run on checked subsets.
        n_target_classes: target classes of the targeted attacks (at most C - 1).
        bounds: input bounds.
        batch_size: points per chunk; ``None`` for one chunk of all the points.
        certify: skip the points CROWN certifies (models :func:`vulnscope.certify.certify`
            can read; any other model is attacked whole).
        shard: under ``torchrun``, share the chunks among the ranks.

    Returns:
        :class:`~vulnscope.evaluate.StandardEvaluation`, with ``certified``.

    Example:
        >>> import torch
        >>> from vulnscope.evaluate import adaptive_evaluation
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(6, 1, 2, 2), torch.randint(0, 3, (6,))
        >>> rep = adaptive_evaluation(model, x, y, eps=0.1)
        >>> len(rep.broken_by) == 6 and 0.0 <= rep.robust_accuracy <= 1.0
        True

    """
    check_real(eps, "eps", minimum=0.0, exclusive=True)
    curve = adaptive_evaluation_curve(
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
        certify=certify,
        shard=shard,
    )
    return curve.evaluations[0]
