"""Auto-PGD: PGD with momentum and a step size that adapts itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_choice, check_fraction, check_int
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.iterative import best_of_restarts, value_and_grad
from vulnscope.attacks.losses import LOSSES, Loss, is_adversarial
from vulnscope.attacks.norms import lp_norm, per_sample, project, steepest_ascent
from vulnscope.attacks.rows import keep_rows

__all__ = ["APGD"]


@dataclass
class _Walk:
    """Per-sample state of the samples still being attacked (rows align with ``index``)."""

    index: Tensor  # (n,) positions in the batch given to the run
    x: Tensor  # centres of the balls
    y: Tensor
    target: Tensor | None
    x_cur: Tensor
    x_prev: Tensor
    grad: Tensor
    loss_prev: Tensor
    best_x: Tensor
    best_grad: Tensor
    best_loss: Tensor
    step: Tensor  # (n,) step sizes
    increases: Tensor  # (n,) loss increases since the last checkpoint
    best_at_check: Tensor
    reduced_at_check: Tensor
    adv_x: Tensor  # the latest adversarial iterate (valid where ``adv``)
    adv: Tensor

    def keep(self, mask: Tensor) -> _Walk:
        return keep_rows(self, mask)


class APGD(Attack):
    r"""Auto-PGD with the cross-entropy or the DLR loss.

    Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks". Gradient steps with momentum 0.75 start at step
    size ``2 eps``; at checkpoints after 22%, then 19%, 16%... of the budget (never less
    than 6%), a sample's step size halves and it restarts from its best point if fewer
    than ``rho`` of its steps since the last checkpoint raised the loss, or if its step
    size was not halved at the last checkpoint and its best loss has not improved since.
    Every iterate counts: a sample is broken if any iterate is adversarial.

    ``early_stop=True`` (default) stops on a sample at its first adversarial iterate;
    samples evolve independently, so stopping changes no other sample and no success,
    only which adversarial example is returned and how much work it took. Samples never
    broken return their highest-loss iterate.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        eps: perturbation budget in that norm, >= 0.
        steps: iterations per restart (default 100).
        loss: ``"ce"`` (default, APGD-CE), ``"dlr"`` (APGD-DLR; with ``targeted=True``,
            APGD-T's targeted DLR) or ``"margin"``.
        restarts: independent runs; each runs only on samples not yet broken.
        rho: fraction of loss-raising steps below which the step size halves.
        momentum: weight of the new gradient step against the previous move.
        random_start: start each run at a random point of the ball's boundary
            (as the reference implementation does) instead of at ``x``.
        early_stop: stop on a sample at its first adversarial iterate.
        targeted: move towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        seed: seed of the random starts.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import APGD
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
        >>> res = APGD(eps=0.1, steps=20, loss="dlr")(model, x, y)
        >>> bool((res.norms <= 0.1 + 1e-6).all())
        True

    """

    supported_norms = ("linf", "l2")
    takes_start = True

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        early_stop: bool = True,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=seed)
        self.steps = check_int(steps, "steps")
        self.loss = check_choice(loss, "loss", tuple(LOSSES))
        self.restarts = check_int(restarts, "restarts")
        self.rho = check_fraction(rho, "rho")
        self.momentum = check_fraction(momentum, "momentum")
        self.random_start = check_bool(random_start, "random_start")
        self.early_stop = check_bool(early_stop, "early_stop")

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Restarts of one APGD run; each sample keeps its best result."""
        return self._restarts(model, x, y, None, target, generator)

    def run_from(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        start: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """:meth:`run` whose first restart starts at ``start`` (N, ...)."""
        return self._restarts(model, x, y, start, target, generator)

    def _restarts(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        first: Tensor | None,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        runs = 0

        def run_once(todo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            nonlocal runs
            ts = None if target is None else target[todo]
            if runs == 0 and first is not None:
                start = first[todo]
            else:
                start = self._start(x[todo], generator) if self.random_start else x[todo]
            runs += 1
            return self._single_run(model, x[todo], start, y[todo], ts)

        return best_of_restarts(x, self.restarts, run_once)

    def _start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random point on the boundary of the eps-ball, clipped to the bounds."""
        eps = self.budget()
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            noise = noise * 2.0 - 1.0
        else:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        size = lp_norm(noise, self.norm).clamp_min(1e-12)
        return (x + eps * noise / per_sample(size, x)).clamp(*self.bounds)

    def _single_run(
        self, model: CountingModel, x: Tensor, start: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run. Returns the chosen iterates, whether each is adversarial, best losses."""
        eps, loss = self.budget(), LOSSES[self.loss]
        n = x.shape[0]
        chosen, chosen_adv = start.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        chosen_loss = torch.empty(n, dtype=x.dtype, device=x.device)
        logits, values, grad = value_and_grad(model, start, y, target, loss)
        hit = is_adversarial(logits, y, target)
        walk = _Walk(
            index=torch.arange(n, device=x.device),
            x=x,
            y=y,
            target=target,
            x_cur=start.clone(),
            x_prev=start.clone(),
            grad=grad,
            loss_prev=values,
            best_x=start.clone(),
            best_grad=grad.clone(),
            best_loss=values.clone(),
            step=torch.full((n,), 2.0 * eps, dtype=x.dtype, device=x.device),
            increases=torch.zeros(n, dtype=x.dtype, device=x.device),
            best_at_check=values.clone(),
            reduced_at_check=torch.ones(n, dtype=torch.bool, device=x.device),
            adv_x=start.clone(),
            adv=hit.clone(),
        )
        interval = max(int(0.22 * self.steps), 1)
        shrink, shortest = max(int(0.03 * self.steps), 1), max(int(0.06 * self.steps), 1)
        since_check = 0
        for step_index in range(self.steps + 1):
            if self.early_stop and bool(hit.any()):
                retired = walk.index[hit]
                chosen[retired], chosen_adv[retired] = walk.x_cur[hit], True
                chosen_loss[retired] = walk.best_loss[hit]
                walk = walk.keep(~hit)
            if step_index == self.steps or walk.index.numel() == 0:
                break
            hit, values = self._step(model, walk, loss, eps, first=step_index == 0)
            walk.increases += values > walk.loss_prev
            walk.loss_prev = values
            since_check += 1
            if since_check == interval:
                self._checkpoint(walk, interval)
                since_check, interval = 0, max(interval - shrink, shortest)
        chosen[walk.index] = torch.where(per_sample(walk.adv, walk.x), walk.adv_x, walk.best_x)
        chosen_adv[walk.index] = walk.adv
        chosen_loss[walk.index] = walk.best_loss
        return chosen, chosen_adv, chosen_loss

    def _step(
        self, model: CountingModel, walk: _Walk, loss: Loss, eps: float, *, first: bool
    ) -> tuple[Tensor, Tensor]:
        """Move every sample once and record what it found; returns (adversarial, loss)."""
        with torch.no_grad():
            weight = 1.0 if first else self.momentum
            direction = steepest_ascent(walk.grad, self.norm)
            z = project(
                walk.x,
                walk.x_cur + per_sample(walk.step, walk.x) * direction,
                norm=self.norm,
                eps=eps,
                bounds=self.bounds,
            )
            moved = (
                walk.x_cur + weight * (z - walk.x_cur) + (1 - weight) * (walk.x_cur - walk.x_prev)
            )
            walk.x_prev = walk.x_cur
            walk.x_cur = project(walk.x, moved, norm=self.norm, eps=eps, bounds=self.bounds)
        logits, values, walk.grad = value_and_grad(model, walk.x_cur, walk.y, walk.target, loss)
        hit = is_adversarial(logits, walk.y, walk.target)
        walk.adv_x[hit] = walk.x_cur[hit]
        walk.adv |= hit
        improved = values > walk.best_loss
        walk.best_x[improved] = walk.x_cur[improved]
        walk.best_grad[improved] = walk.grad[improved]
        walk.best_loss = torch.where(improved, values, walk.best_loss)
        return hit, values

    def _checkpoint(self, walk: _Walk, interval: int) -> None:
        """Halve the step of samples that oscillate or stall; send them back to their best."""
        oscillating = walk.increases <= self.rho * interval
        stalled = ~walk.reduced_at_check & (walk.best_at_check >= walk.best_loss)
        reduce = oscillating | stalled
        walk.reduced_at_check = reduce
        walk.best_at_check = walk.best_loss.clone()
        walk.step = torch.where(reduce, walk.step / 2.0, walk.step)
        back = per_sample(reduce, walk.x)
        walk.x_cur = torch.where(back, walk.best_x, walk.x_cur)
        walk.x_prev = torch.where(back, walk.best_x, walk.x_prev)
        walk.grad = torch.where(back, walk.best_grad, walk.grad)
        walk.increases.zero_()
