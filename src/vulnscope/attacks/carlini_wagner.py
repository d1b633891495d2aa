"""The Carlini-Wagner attack: the smallest L2 or L∞ perturbation, found by Adam."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial, margin
from vulnscope.attacks.norms import lp_norm, per_sample
from vulnscope.attacks.rows import keep_rows

__all__ = ["CarliniWagner"]

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_INSIDE = 0.999999  # keeps atanh finite at the bounds, as in the reference code
_PROGRESS = 0.9999  # a loss that fell by less than 0.01% since the last check has stalled
# A search whose bracket is this narrow, relative to its top, stops: on c for L2, on the
# distance itself for L∞.
_CONVERGED = {"l2": 0.01, "linf": 0.01}
_LARGEST_CONST = 1e10


@dataclass
class _Runs:
    """Per-sample state of the samples still searching (rows align with ``index``).

    ``low`` and ``high`` bracket the searched quantity: for L2, the largest ``c`` whose run
    failed and the smallest whose run succeeded; for L∞, the largest ``tau`` whose run
    failed and the smallest L∞ distance found.
    """

    index: Tensor  # (n,) positions in the batch
    x: Tensor  # (n, D) inputs, flat
    origin: Tensor  # (n, D) where the L2 distance is measured: x as the tanh map gives it back
    w0: Tensor  # (n, D) L2: x in tanh space (L∞: unused, x)
    y: Tensor
    target: Tensor | None
    delta: Tensor  # (n, D) the variable: L2 in tanh space, added to w0; L∞ added to x
    m: Tensor  # (n, D) Adam's moments
    v: Tensor
    step: Tensor  # (n,) index of the current iterate in its run
    prev: Tensor  # (n,) loss at the last progress check
    found: Tensor  # (n,) the current run has succeeded
    runs: Tensor  # (n,) runs finished
    const: Tensor  # (n,) c
    tau: Tensor  # (n,) L∞ threshold of the current run
    low: Tensor
    high: Tensor
    best: Tensor  # (n, D) the smallest adversarial point found
    best_norm: Tensor  # (n,) its distance to x, inf while there is none

    def keep(self, mask: Tensor) -> _Runs:
        return keep_rows(self, mask)


class CarliniWagner(Attack):
    r"""The Carlini-Wagner attack: the smallest adversarial perturbation in L2 or L∞.

    Carlini and Wagner (2017), "Towards evaluating the robustness of neural networks".
    **L2**: the input is written ``x' = mid + half · tanh(w)``, so that every ``w`` lies
    inside the bounds, and Adam minimises over ``w``, from ``x``,

    .. math:: \|x' - x\|_2^2 + c \cdot \max(Z_y(x') - \max_{i \ne y} Z_i(x') + \kappa, 0)

    (targeted: ``max(max_{i≠t} Z_i - Z_t + κ, 0)``) for ``steps`` steps. A binary search
    over ``c`` per sample looks for the smallest ``c`` that succeeds: ``c`` grows tenfold
    from ``initial_const`` until a run finds an adversarial point, then bisects the
    bracket. Each sample keeps the smallest adversarial point (margin at least ``κ``)
    of every step of every run. With ``abort_early``, a run that has not yet found an
    adversarial point stops when its loss has fallen by less than 0.01% since the check
    ``ceil(steps / 10)`` steps earlier. The reference code applies that check to every
    run, on the loss of the whole batch (Foolbox too); per sample, it stops runs that are
    still refining an adversarial point, whose loss rises for a while each time they
    cross the boundary (with 100 steps and 5 runs on the digits CNN, 46 of 397 distances
    came out over 1% larger than Foolbox's; with the check limited to runs without an
    adversarial point, none did).

    Every sample runs its own search in one shared batch: a sample whose run stops
    starts its next run at the next step, so the batch stays full until samples finish.
    A sample finishes after ``binary_search_steps`` runs, once its bracket on ``c`` is
    within 1%, or once it has an adversarial point within ``eps``. (A later run at a
    ``c`` inside a narrow bracket is still a fresh start that may land closer: with 9
    runs of 100 steps on the digits CNN, stopping at 10% saved 10% of the work but left
    39 of 394 distances over 0.1% above Foolbox's, and the median above it; at 1%, one.)
    So a batch gives each sample what it would get alone.

    **L∞**: the paper's penalty ``c · f(x') + Σ_i max(|x'_i - x_i| - τ, 0)``, with two
    changes that make it work in few steps. ``τ`` is found by bisection rather than
    shrunk by 10% until the first failure (which leaves up to 10% on the table): the first
    run has no penalty and stops at its first adversarial point; each later run tries
    ``τ`` halfway between the largest ``τ`` that failed (0 at first) and the smallest
    distance found, starts from the best point clipped to the ``τ``-box, and succeeds, and
    ends, as soon as it finds an adversarial point within ``τ``. A sample stops after
    ``binary_search_steps`` runs or once that bracket is within 1%. And Adam moves ``x'``
    itself, projected onto the bounds, not ``w``: the tanh map all but freezes the
    coordinates at a bound, which an L∞ perturbation needs most (on the digits CNN, whose
    inputs are mostly 0, the median distance found was 0.19 through tanh and 0.11
    without). ``c`` stays at ``initial_const``: inside the ``τ``-box only ``c · f`` has a
    gradient, and Adam's steps do not depend on its scale, so ``c`` only sets how far a
    coordinate may leave the box (where ``c |∂f/∂x_i| > 1``); a small ``c`` makes the
    penalty the near-hard box that a run at ``τ`` asks for. As in the reference code, a
    run does not stop on a plateau of its loss (which is flat while ``c · f`` is small).

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        eps: optional cap: the result is projected onto the eps-ball, and a sample stops
            searching once it has an adversarial point within ``eps``.
        steps: Adam steps per run (default 100).
        binary_search_steps: runs per sample: values of ``c`` (L2) or ``τ`` (L∞) tried.
        initial_const: the first ``c`` (L2); the constant ``c`` (L∞); > 0.
        confidence: ``κ >= 0``, the logit margin an adversarial point must have.
        learning_rate: Adam's step size: in tanh space (L2), as a fraction of the width
            of the bounds (L∞). Adam's first step moves every coordinate by about this
            fraction of the box: keep it well below the perturbation sought, or that first
            step lands far past the boundary and the search on ``c`` takes the overshoot
            for a success (with bounds ±20 and distances near 0.4, use 0.001).
        abort_early: end a run without an adversarial point when its loss stops falling
            (L2); end a run at its first success (L∞).
        targeted: move towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        seed: accepted for the common signature; the attack is deterministic.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import CarliniWagner
        >>> def model(x):  # class 1 while the pixels sum to more than 1
        ...     return torch.stack([torch.zeros(len(x)), 2 * x.flatten(1).sum(1) - 2], 1)
        >>> x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([1])
        >>> res = CarliniWagner()(model, x, y)
        >>> bool(res.success), round(float(res.norms), 2)  # nearest: every pixel at 0.25
        (True, 0.5)

    """

    supported_norms = ("l2", "linf")
    requires_eps = False

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        steps: int = 100,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        confidence: float = 0.0,
        learning_rate: float = 0.01,
        abort_early: bool = True,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=seed)
        self.steps = check_int(steps, "steps")
        self.binary_search_steps = check_int(binary_search_steps, "binary_search_steps")
        self.initial_const = check_real(initial_const, "initial_const", minimum=0.0, exclusive=True)
        self.confidence = check_real(confidence, "confidence", minimum=0.0)
        self.learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, exclusive=True)
        self.abort_early = check_bool(abort_early, "abort_early")

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Every sample's search, in one batch (see the class docstring)."""
        result = x.flatten(1).clone()
        with torch.no_grad():
            todo = (~is_adversarial(model(x), y, target)).nonzero()[:, 0]
        if todo.numel() > 0:
            chosen = None if target is None else target[todo]
            runs = self._start(todo, result[todo], y[todo], chosen)
            while runs.index.numel() > 0:
                runs = self._advance(model, runs, x.shape[1:], result)
        return result.view_as(x)

    def _start(self, index: Tensor, x: Tensor, y: Tensor, target: Tensor | None) -> _Runs:
        low, high = self.bounds
        if self.norm == "l2":
            w0 = torch.atanh((x - (high + low) / 2) / ((high - low) / 2) * _INSIDE)
            origin = torch.tanh(w0) * ((high - low) / 2) + (high + low) / 2
        else:
            w0 = origin = x

        def full(value: float) -> Tensor:
            return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)

        zeros, counts = torch.zeros_like(x), torch.zeros_like(index)
        return _Runs(
            index=index,
            x=x,
            origin=origin,
            w0=w0,
            y=y,
            target=target,
            delta=zeros,
            m=zeros.clone(),
            v=zeros.clone(),
            step=counts,
            prev=full(math.inf),
            found=counts.bool(),
            runs=counts.clone(),
            const=full(self.initial_const),
            tau=full(math.inf),
            low=full(0.0),
            high=full(math.inf),
            best=x.clone(),
            best_norm=full(math.inf),
        )

    def _advance(
        self, model: CountingModel, runs: _Runs, shape: torch.Size, result: Tensor
    ) -> _Runs:
        """Evaluate and record every row's iterate, take one Adam step, end runs and searches."""
        low, high = self.bounds
        half = (high - low) / 2
        if self.norm == "l2":
            tanh = torch.tanh(runs.w0 + runs.delta)
            x_adv = (tanh * half + (high + low) / 2).requires_grad_(True)
        else:
            x_adv = (runs.x + runs.delta).requires_grad_(True)
        logits = model(x_adv.view(-1, *shape))
        margins = margin(logits, runs.y, runs.target)
        penalty = runs.const * (self.confidence - margins).clamp_min(0.0)
        (grad,) = torch.autograd.grad(penalty.sum(), x_adv)
        grad = grad.contiguous()  # may come back as a broadcast view: it is updated in place
        with torch.no_grad():
            x_adv = x_adv.detach()
            loss = penalty.detach() + self._distance(runs, x_adv, grad)
            adv = is_adversarial(logits, runs.y, runs.target) & (margins >= self.confidence)
            norms = lp_norm(x_adv - runs.x, self.norm)
            better = adv & (norms < runs.best_norm)
            runs.best_norm = torch.where(better, norms, runs.best_norm)
            runs.best = torch.where(per_sample(better, x_adv), x_adv, runs.best)
            ended = runs.step == self.steps - 1
            if self.norm == "l2":
                runs.found |= adv
                if self.abort_early:
                    check = runs.step % math.ceil(self.steps / 10) == 0
                    stalled = check & (loss > _PROGRESS * runs.prev)
                    ended |= stalled & ~runs.found
                    runs.prev = torch.where(check, loss, runs.prev)
                self._adam(runs, grad.mul_((1.0 - tanh * tanh) * half), self.learning_rate)
            else:
                runs.found = runs.best_norm.isfinite() & (runs.best_norm <= runs.tau)
                if self.abort_early:
                    ended |= runs.found
                self._adam(runs, grad, self.learning_rate * (high - low))
                runs.delta.add_(runs.x).clamp_(low, high).sub_(runs.x)
            if bool(ended.any()):
                runs = self._end_runs(runs, ended, result)
        return runs

    def _distance(self, runs: _Runs, x_adv: Tensor, grad: Tensor) -> Tensor:
        """The distance term of the loss, per row; adds its gradient to ``grad``."""
        if self.norm == "l2":
            diff = x_adv - runs.origin
            grad.add_(diff, alpha=2.0)
            return (diff * diff).sum(1)
        diff = x_adv - runs.x
        excess = (diff.abs() - runs.tau[:, None]).clamp_min_(0.0)
        grad.add_(diff.sign_().mul_(excess > 0))
        return excess.sum(1)

    @staticmethod
    def _adam(runs: _Runs, grad: Tensor, size: float) -> None:
        runs.step += 1
        runs.m.mul_(_BETA1).add_(grad, alpha=1.0 - _BETA1)
        runs.v.mul_(_BETA2).addcmul_(grad, grad, value=1.0 - _BETA2)
        t = runs.step.to(grad.dtype)[:, None]
        denominator = (runs.v / (1.0 - _BETA2**t)).sqrt_().add_(_ADAM_EPS)
        runs.delta.addcdiv_(runs.m / (1.0 - _BETA1**t), denominator, value=-size)

    def _end_runs(self, runs: _Runs, ended: Tensor, result: Tensor) -> _Runs:
        """Move the search of the rows whose run ended; retire the rows that are done."""
        runs.runs += ended
        if self.norm == "l2":
            self._next_const(runs, ended)
        else:
            self._next_tau(runs, ended)
        done = runs.runs >= self.binary_search_steps
        narrow = runs.high - runs.low <= _CONVERGED[self.norm] * runs.high
        done |= runs.high.isfinite() & narrow
        if self.norm == "linf":
            done |= runs.high.isinf()  # the unpenalised run found nothing; no run would
        if self.eps is not None:
            done |= runs.best_norm <= self.eps
        done &= ended
        fresh = per_sample(ended, runs.m)
        runs.m = runs.m.masked_fill_(fresh, 0.0)
        runs.v = runs.v.masked_fill_(fresh, 0.0)
        runs.step = runs.step.masked_fill_(ended, 0)
        runs.prev = runs.prev.masked_fill_(ended, math.inf)
        runs.found &= ~ended
        if bool(done.any()):
            hit = done & runs.best_norm.isfinite()
            result[runs.index[hit]] = runs.best[hit]
            runs = runs.keep(~done)
        return runs

    def _next_const(self, runs: _Runs, ended: Tensor) -> None:
        """L2: bracket ``c``; grow it tenfold until the first success, then bisect."""
        found, failed = ended & runs.found, ended & ~runs.found
        runs.high = torch.where(found, torch.minimum(runs.high, runs.const), runs.high)
        runs.low = torch.where(failed, torch.maximum(runs.low, runs.const), runs.low)
        following = torch.where(runs.high.isinf(), runs.const * 10.0, (runs.low + runs.high) / 2)
        if self.binary_search_steps >= 10:
            # as in the reference code: the last run repeats the smallest c that succeeded
            last = runs.runs == self.binary_search_steps - 1
            following = torch.where(last, runs.high.clamp_max(_LARGEST_CONST), following)
        runs.const = torch.where(ended, following, runs.const)
        runs.delta.masked_fill_(per_sample(ended, runs.delta), 0.0)

    def _next_tau(self, runs: _Runs, ended: Tensor) -> None:
        """L∞: bisect ``tau`` between the largest failure and the smallest distance found."""
        failed = ended & ~runs.found & runs.tau.isfinite()
        runs.high = runs.best_norm.clone()
        runs.low = torch.where(failed, torch.maximum(runs.low, runs.tau), runs.low)
        # a run beat a tau that failed before: that failure was the optimiser's, start over
        runs.low = runs.low.masked_fill_(runs.low >= runs.high, 0.0)
        runs.tau = torch.where(ended, (runs.low + runs.high) / 2, runs.tau)
        radius = per_sample(runs.tau.clamp_max(self.bounds[1] - self.bounds[0]), runs.x)
        start = torch.minimum(torch.maximum(runs.best, runs.x - radius), runs.x + radius)
        runs.delta = torch.where(per_sample(ended, runs.x), start - runs.x, runs.delta)
