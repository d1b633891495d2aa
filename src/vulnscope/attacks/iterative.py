"""Projected gradient ascent: the engine under FGSM, BIM and PGD.

Kept lean on purpose: per step one forward and one backward pass with respect to the
input (the parameters do not require gradients inside an attack), then a handful of
elementwise operations, so the attack costs next to nothing beyond the model.

The engine climbs a *ladder* of budgets: every sample is attacked inside the smallest
ball first; a sample broken there is broken in every larger ball and leaves, a sample
that survives restarts inside the next ball. Samples on different rungs share each
batched forward pass, so a robust-accuracy curve costs one pass with a full batch
rather than one shrinking batch per budget. A single budget is a ladder of one rung.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import LOSSES, Loss, is_adversarial
from vulnscope.attacks.norms import per_sample, project, random_in_ball, steepest_ascent
from vulnscope.attacks.rows import keep_rows
from vulnscope.models.checks import is_batch_independent

__all__ = [
    "AscentResult",
    "Budget",
    "GradientAscentAttack",
    "StartFn",
    "best_of_restarts",
    "gradient_ascent",
    "random_start",
    "value_and_grad",
]

StartFn = Callable[[Tensor, Tensor], Tensor]
"""Maps centres (n, ...) and their radii (n,) to starting points inside the balls."""


@dataclass(frozen=True)
class Budget:
    """One rung of the ladder: a ball radius and the steps spent inside it."""

    eps: float
    steps: int
    step_size: float


@dataclass(frozen=True)
class AscentResult:
    """Where each sample stopped, and on which rungs it was broken.

    Attributes:
        x_adv: (N, ...) the iterate each sample stopped at: its first adversarial
            iterate (with early stopping), else its final iterate on its last rung.
        broken: (E, N) bool: an adversarial iterate was found inside budget ``e``, or a
            smaller one. Only iterates the engine evaluated count; without
            ``evaluate_final`` the final iterate of each run is left to the caller.

    """

    x_adv: Tensor
    broken: Tensor


def value_and_grad(
    model: Callable[[Tensor], Tensor],
    x_adv: Tensor,
    y: Tensor,
    target: Tensor | None,
    loss: Loss,
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (N, C), per-sample loss (N,) and its input gradient (N, ...) at ``x_adv``."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    values = loss(logits, y, target)
    (grad,) = torch.autograd.grad(values.sum(), x_adv)
    return logits.detach(), values.detach(), grad


def random_start(norm: str, bounds: tuple[float, float], generator: torch.Generator) -> StartFn:
    """Start at a point drawn uniformly from each sample's ball, clipped to the bounds."""

    def start(x: Tensor, eps: Tensor) -> Tensor:
        noise = random_in_ball(x, norm, eps, generator=generator)
        return project(x, x + noise, norm=norm, eps=eps, bounds=bounds)

    return start


@dataclass
class _Walkers:
    """Per-sample state of the samples still climbing (rows align with ``index``)."""

    index: Tensor  # (n,) positions in the batch
    level: Tensor  # (n,) rung of the ladder
    count: Tensor  # (n,) steps taken on the current rung
    has_prev: Tensor  # (n,) whether x_prev is an iterate of the current rung
    x: Tensor  # centres of the balls
    y: Tensor
    target: Tensor | None
    x_cur: Tensor  # the current iterate, not yet evaluated
    x_prev: Tensor
    low: Tensor | None  # Linf only: ball ∩ box is the box [low, high]
    high: Tensor | None

    def keep(self, mask: Tensor) -> _Walkers:
        return keep_rows(self, mask)


def _rows_equal(a: Tensor, b: Tensor) -> Tensor:
    return (a == b).flatten(1).all(dim=1)


def _box_blocked(x_adv: Tensor, grad: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Coordinates that sit on a bound with the gradient pushing outwards (cannot move)."""
    return ((x_adv <= bounds[0]) & (grad < 0)) | ((x_adv >= bounds[1]) & (grad > 0))


def _linf_box(x: Tensor, eps: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    radius = per_sample(eps, x)
    return (x - radius).clamp_(min=bounds[0]), (x + radius).clamp_(max=bounds[1])


def _step(
    walk: _Walkers,
    grad: Tensor,
    size: Tensor,
    eps_of: Tensor,
    norm: str,
    bounds: tuple[float, float],
    l1_sparsity: float,
) -> Tensor:
    """One projected steepest-ascent step of every row; a new tensor."""
    if walk.low is not None and walk.high is not None:
        x_next = torch.addcmul(walk.x_cur, per_sample(size, grad), grad.sign_())
        torch.maximum(x_next, walk.low, out=x_next)
        return torch.minimum(x_next, walk.high, out=x_next)
    if norm == "l1":
        grad.masked_fill_(_box_blocked(walk.x_cur, grad, bounds), 0.0)
    direction = steepest_ascent(grad, norm, l1_sparsity=l1_sparsity)
    moved = walk.x_cur + per_sample(size, grad) * direction
    return project(walk.x, moved, norm=norm, eps=eps_of[walk.level], bounds=bounds)


def gradient_ascent(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    budgets: Sequence[Budget],
    loss: Loss,
    norm: str,
    bounds: tuple[float, float],
    early_stop: bool,
    start: StartFn | None = None,
    evaluate_final: bool = False,
    l1_sparsity: float = 0.05,
    detect_cycles: bool = True,
) -> AscentResult:
    """Maximise ``loss`` inside eps-balls around ``x`` by projected steepest ascent.

    Each step moves ``step_size`` along the steepest-ascent direction of the norm
    (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks")
    and projects back onto ball ∩ box.

    Cycle detection (exact for a deterministic model): the next iterate depends on the
    current one alone, so once a sample's iterate equals the previous one or the one
    before (sign steps on a clipped lattice often settle into such a cycle within a few
    steps), the rest of its run is known. It stops there with the iterate the full run
    would end on; with ``early_stop`` no later iterate can be adversarial, since every
    iterate of the cycle has been evaluated already. Same result, less work.

    Args:
        model: maps (N, ...) to logits (N, C).
        x: centres of the balls, shape (N, ...).
        y: true labels (N,).
        target: target labels (N,) or ``None``.
        budgets: the rungs, by increasing radius; more than one needs ``early_stop`` and
            ``evaluate_final``.
        loss: per-sample objective to maximise (see :mod:`vulnscope.attacks.losses`).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        bounds: ``(low, high)`` input bounds.
        early_stop: stop a sample at its first adversarial iterate and keep it;
            otherwise run every step and end on the last iterate (classic PGD).
        start: starting points for each rung; ``None`` starts at ``x``.
        evaluate_final: also evaluate the last iterate of each rung, so that ``broken``
            is complete (otherwise the caller scores the returned points).
        l1_sparsity: fraction of coordinates an L1 step moves.
        detect_cycles: stop samples whose iterates repeat (valid only if the model is a
            deterministic function of its input).

    Returns:
        :class:`AscentResult`.

    """
    rungs = len(budgets)
    if rungs > 1 and not (early_stop and evaluate_final):
        raise ValueError("a ladder of budgets needs early_stop and evaluate_final")
    device = x.device
    eps_of = torch.tensor([b.eps for b in budgets], dtype=x.dtype, device=device)
    steps_of = torch.tensor([b.steps for b in budgets], device=device)
    size_of = torch.tensor([b.step_size for b in budgets], dtype=x.dtype, device=device)
    n = x.shape[0]
    result = x.clone()
    broken = torch.zeros(rungs, n, dtype=torch.bool, device=device)
    levels = torch.arange(rungs, device=device)[:, None]
    level = torch.zeros(n, dtype=torch.long, device=device)
    x_start = start(x, eps_of[level]) if start is not None else x.clone()
    low, high = _linf_box(x, eps_of[level], bounds) if norm == "linf" else (None, None)
    walk = _Walkers(
        index=torch.arange(n, device=device),
        level=level,
        count=torch.zeros_like(level),
        has_prev=torch.zeros(n, dtype=torch.bool, device=device),
        x=x,
        y=y,
        target=target,
        x_cur=x_start,
        x_prev=x_start,
        low=low,
        high=high,
    )
    while walk.index.numel() > 0:
        logits, _, grad = value_and_grad(model, walk.x_cur, walk.y, walk.target, loss)
        steps = steps_of[walk.level]
        # Rows leaving their rung before this step: retired for good, or climbing.
        retire = torch.zeros_like(walk.has_prev)
        climb = torch.zeros_like(walk.has_prev)
        if early_stop:
            hit = is_adversarial(logits, walk.y, walk.target)
            if bool(hit.any()):
                result[walk.index[hit]] = walk.x_cur[hit]
                broken[:, walk.index[hit]] = levels >= walk.level[hit]
                retire |= hit
        if evaluate_final:
            final = (walk.count == steps) & ~retire
            if bool(final.any()):
                on_top = final & (walk.level == rungs - 1)
                result[walk.index[on_top]] = walk.x_cur[on_top]
                retire |= on_top
                climb |= final & ~on_top
        x_next = _step(walk, grad, size_of[walk.level], eps_of, norm, bounds, l1_sparsity)
        count = walk.count + 1
        if detect_cycles:
            cycling = _rows_equal(x_next, walk.x_cur)
            cycling |= walk.has_prev & _rows_equal(x_next, walk.x_prev)
            cycling &= (count < steps) & ~retire & ~climb
            if bool(cycling.any()):
                # period 1 or 2: an even number of steps left ends on x_next, an odd on x_cur
                even = (steps - count) % 2 == 0
                ends_on = torch.where(per_sample(even, x_next), x_next, walk.x_cur)
                on_top = cycling & (walk.level == rungs - 1)
                result[walk.index[on_top]] = ends_on[on_top]
                retire |= on_top
                climb |= cycling & ~on_top
        if not evaluate_final:
            reached = (count == steps) & ~retire & ~climb
            if bool(reached.any()):
                result[walk.index[reached]] = x_next[reached]
                retire |= reached
        # Every row advances; climbing rows are then reset and retired rows dropped.
        walk.x_prev, walk.x_cur, walk.count = walk.x_cur, x_next, count
        walk.has_prev.fill_(True)
        if bool(climb.any()):
            _climb(walk, climb, eps_of, bounds, start)
        if bool(retire.any()):
            walk = walk.keep(~retire)
    return AscentResult(x_adv=result, broken=broken)


def _climb(
    walk: _Walkers,
    rows: Tensor,
    eps_of: Tensor,
    bounds: tuple[float, float],
    start: StartFn | None,
) -> None:
    """Move the samples in ``rows`` to the next rung, restarting from a fresh start."""
    walk.level[rows] += 1
    walk.count[rows] = 0
    walk.has_prev[rows] = False
    eps = eps_of[walk.level[rows]]
    centres = walk.x[rows]
    walk.x_cur[rows] = start(centres, eps) if start is not None else centres
    if walk.low is not None and walk.high is not None:
        walk.low[rows], walk.high[rows] = _linf_box(centres, eps, bounds)


def best_of_restarts(
    x: Tensor, restarts: int, run_once: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
) -> Tensor:
    """Up to ``restarts`` runs on the samples still unbroken; each sample keeps its best.

    ``run_once(todo)`` attacks ``x[todo]`` and returns its result (len(todo), ...), whether
    each result is adversarial, and its loss. A sample keeps its first adversarial result,
    else the one with the highest loss; broken samples are not attacked again.
    """
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = (~broken).nonzero()[:, 0]
        if todo.numel() == 0:
            break
        x_out, success, values = run_once(todo)
        better = success | (values > best_loss[todo])
        best[todo[better]] = x_out[better]
        best_loss[todo[better]] = values[better]
        broken[todo[success]] = True
    return best


class GradientAscentAttack(Attack):
    """Base of the attacks that run :func:`gradient_ascent`: FGSM, BIM, PGD.

    A subclass stores ``loss``, ``l1_sparsity`` and ``early_stop`` and says how many steps
    of what size it takes inside a ball (:meth:`budget_at`) and where it starts
    (:meth:`start_fn`); running one budget and climbing several (:meth:`run_curve`)
    come from here.
    """

    loss: str
    l1_sparsity: float
    early_stop: bool

    @abc.abstractmethod
    def budget_at(self, eps: float) -> Budget:
        """Steps and step size inside the ball of radius ``eps``."""

    def start_fn(self, generator: torch.Generator) -> StartFn | None:
        """Where each run starts; ``None`` for the clean input."""
        return None

    def climb(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        budgets: list[Budget],
        generator: torch.Generator,
        *,
        evaluate_final: bool = False,
    ) -> AscentResult:
        """Run the engine with this attack's settings over ``budgets``."""
        return gradient_ascent(
            model,
            x,
            y,
            target,
            budgets=budgets,
            loss=LOSSES[self.loss],
            norm=self.norm,
            bounds=self.bounds,
            early_stop=self.early_stop or evaluate_final,
            start=self.start_fn(generator),
            evaluate_final=evaluate_final,
            l1_sparsity=self.l1_sparsity,
            detect_cycles=model.deterministic,
        )

    def perturb(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
    ) -> Tensor:
        """The points :meth:`__call__` returns, without its checks and bookkeeping.

        For inner loops that attack thousands of minibatches they have already validated,
        such as adversarial training: no input validation, no clean or final forward
        pass, no counting, no guard of the model's state. The caller puts the model in
        eval mode and stops its parameters' gradients (as
        :func:`vulnscope.models.preserved_model_state` does), which ``__call__`` would
        otherwise do. Same seed, same points as ``__call__``.

        Args:
            model: maps (N, ...) to logits (N, C), deterministic (eval mode).
            x: (N, ...) inputs inside ``bounds``.
            y: (N,) int64 labels.
            target: (N,) target labels when the attack is targeted.

        Returns:
            (N, ...) the adversarial points, in the eps-ball and the bounds.

        """
        counting = CountingModel(model, batch_independent=is_batch_independent(model))
        generator = make_generator(self.seed, x.device)
        with torch.enable_grad():
            x_adv = self.run(counting, x.detach(), y, target=target, generator=generator)
        return project(x, x_adv.detach(), norm=self.norm, eps=self.budget(), bounds=self.bounds)

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """One run inside the eps-ball."""
        return self.climb(model, x, y, target, [self.budget_at(self.budget())], generator).x_adv

    def run_curve(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        epsilons: list[float],
        generator: torch.Generator,
    ) -> Tensor | None:
        """All budgets in one ladder: the samples still robust climb to the next budget.

        Needs early stopping when a run has several steps (with classic semantics a
        sample's success depends on its last iterate only, so each budget runs alone).
        """
        budgets = [self.budget_at(eps) for eps in epsilons]
        if not self.early_stop and any(budget.steps > 1 for budget in budgets):
            return None
        return self.climb(model, x, y, None, budgets, generator, evaluate_final=True).broken
