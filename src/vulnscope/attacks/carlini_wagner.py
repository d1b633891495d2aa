"""The Carlini-Wagner attack: the smallest L2 or L∞ perturbation, found by Adam."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial
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
class _Search:
    """Per-sample state of the samples still searching, carried from run to run.

    ``low`` and ``high`` bracket the searched quantity: for L2, the largest ``c`` whose run
    failed and the smallest whose run succeeded; for L∞, the largest ``tau`` whose run
    failed and the smallest L∞ distance found.
    """

    index: Tensor  # (n,) positions in the batch
    x: Tensor  # (n, D) inputs, flat
    origin: Tensor  # (n, D) where the L2 distance is measured: x as the box map gives it back
    y: Tensor
    target: Tensor | None
    start: Tensor  # (n, D) where the next run starts: L2 x as a u (see _Run.w); L∞ a point
    const: Tensor  # (n,) c
    tau: Tensor  # (n,) L∞ threshold of the next run
    low: Tensor
    high: Tensor
    best: Tensor  # (n, D) the smallest adversarial point found
    best_norm: Tensor  # (n,) its distance to x, inf while there is none

    def keep(self, mask: Tensor) -> _Search:
        return keep_rows(self, mask)


@dataclass
class _Run:
    """The rows of one run that are still stepping, all at the same step."""

    rows: Tensor  # (k,) positions in the _Search
    x: Tensor
    origin: Tensor
    y: Tensor
    target: Tensor | None
    const: Tensor
    tau: Tensor
    w: Tensor  # (k, D) what Adam moves: L2 u = 2w, x' = low + width · sigmoid(u); L∞ x'
    m: Tensor  # (k, D) Adam's moments, each divided by its (1 - beta)
    v: Tensor
    best: Tensor
    best_norm: Tensor
    found: Tensor  # (k,) the run has succeeded
    prev: Tensor  # (k,) L2: loss at the last progress check

    def keep(self, mask: Tensor) -> _Run:
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

    Every sample runs its own search in one shared batch, run after run in lockstep: the
    samples still searching start each run together, so Adam's step count and the progress
    checks are shared, and a sample whose run stops early leaves the batch until the next
    run starts. A sample finishes after ``binary_search_steps`` runs, once its bracket on
    ``c`` is within 1%, or once it has an adversarial point within ``eps``. (A later run at
    a ``c`` inside a narrow bracket is still a fresh start that may land closer: with 9
    runs of 100 steps on the digits CNN, stopping at 10% saved 10% of the work but left
    39 of 394 distances over 0.1% above Foolbox's, and the median above it; at 1%, one.)
    So a batch gives each sample what it would get alone, bit for bit where the model's
    own arithmetic does not depend on the batch. A step costs one forward and one
    backward pass of the model, whose parameters get no gradient; the hinge's gradient
    with respect to the logits is written out, and the tanh box is evaluated as the equal
    ``low + (high - low) · sigmoid(2w)`` (on a CPU, sigmoid takes a third of tanh's
    time).

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
            # counted, but past the model's padding: the batch of the points still to attack
            # would otherwise be padded up to this one at every step
            logits = model.model(x)
        model.record(forward=x.shape[0])
        todo = (~is_adversarial(logits, y, target)).nonzero()[:, 0]
        if todo.numel() > 0:
            chosen = None if target is None else target[todo]
            search = self._start(todo, result[todo], y[todo], chosen)
            for finished in range(1, self.binary_search_steps + 1):
                found = self._one_run(model, search, x.shape[1:])
                search = self._next_run(search, found, finished, result)
                if search.index.numel() == 0:
                    break
        return result.view_as(x)

    def _start(self, index: Tensor, x: Tensor, y: Tensor, target: Tensor | None) -> _Search:
        low, high = self.bounds
        if self.norm == "l2":
            # x' = mid + half · tanh(w) = low + (high - low) · sigmoid(u) with u = 2w: the
            # same box, and on a CPU sigmoid costs a third of tanh's time
            start = torch.atanh((x - (high + low) / 2) / ((high - low) / 2) * _INSIDE) * 2.0
            origin = start.sigmoid() * (high - low) + low
        else:
            start = origin = x

        def full(value: float) -> Tensor:
            return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)

        return _Search(
            index=index,
            x=x,
            origin=origin,
            y=y,
            target=target,
            start=start,
            const=full(self.initial_const),
            tau=full(math.inf),
            low=full(0.0),
            high=full(math.inf),
            best=x.clone(),
            best_norm=full(math.inf),
        )

    def _one_run(self, model: CountingModel, search: _Search, shape: torch.Size) -> Tensor:
        """One run of every sample still searching; (n,) whether each run succeeded.

        Updates each sample's best point in ``search``.
        """
        run = _Run(
            rows=torch.arange(search.x.shape[0], device=search.x.device),
            x=search.x,
            origin=search.origin,
            y=search.y,
            target=search.target,
            const=search.const,
            tau=search.tau,
            w=search.start.clone(),
            m=torch.zeros_like(search.x),
            v=torch.zeros_like(search.x),
            best=search.best.clone(),
            best_norm=search.best_norm.clone(),
            found=torch.zeros_like(search.index, dtype=torch.bool),
            prev=torch.full_like(search.const, math.inf),
        )
        found = run.found.clone()
        for step in range(self.steps):
            ended = self._step(model, run, shape, step)
            if ended is not None and bool(ended.any()):
                self._leave(search, run, ended, found)
                run = run.keep(~ended)
                if run.rows.numel() == 0:
                    return found
        self._leave(search, run, torch.ones_like(run.found), found)
        return found

    @staticmethod
    def _leave(search: _Search, run: _Run, mask: Tensor, found: Tensor) -> None:
        """Hand the rows in ``mask`` back to the search: their best point, their outcome."""
        rows = run.rows[mask]
        search.best[rows] = run.best[mask]
        search.best_norm[rows] = run.best_norm[mask]
        found[rows] = run.found[mask]

    def _step(self, model: CountingModel, run: _Run, shape: torch.Size, step: int) -> Tensor | None:
        """Record every row's iterate and take one Adam step (none after the last).

        Returns the rows whose run ends early at this step, or None where none may.
        """
        low, high = self.bounds
        point = run.w.detach().requires_grad_(True)
        x_adv = point
        if self.norm == "l2":
            x_adv = point.sigmoid()  # the tanh box, see _start
            if (low, high) != (0.0, 1.0):
                x_adv = x_adv * (high - low) + low
        logits = model(x_adv.view(-1, *shape))
        last = step == self.steps - 1
        with torch.no_grad():
            margins, adv, push = self._hinge(logits.detach(), run)
            here = x_adv.detach()
            self._record(run, adv, here)
        if self.norm == "linf":
            (grad,) = torch.autograd.grad(logits, point, push)
            with torch.no_grad():
                run.found = run.best_norm.isfinite() & (run.best_norm <= run.tau)
                if not last:
                    diff = run.w - run.x
                    excess = (diff.abs() - run.tau[:, None]).clamp_min_(0.0)
                    grad = grad.contiguous().add_(diff.sign_().mul_(excess > 0))
                    self._adam(run, grad, step + 1, self.learning_rate * (high - low), _ADAM_EPS)
                    run.w.clamp_(low, high)
            return run.found if self.abort_early else None
        with torch.no_grad():
            run.found |= adv
            diff = here - run.origin
            ended = None
            if self.abort_early and step % math.ceil(self.steps / 10) == 0:
                penalty = run.const * (self.confidence - margins).clamp_min(0.0)
                loss = penalty + (diff * diff).sum(1)
                ended = (loss > _PROGRESS * run.prev) & ~run.found
                run.prev = loss
        # the loss's gradient in u, through the model and through the distance
        (grad,) = torch.autograd.grad((logits, x_adv), point, (push, diff.add_(diff)))
        if not last:
            with torch.no_grad():
                # Adam on w = u / 2: twice the step, and half the epsilon for a gradient
                # half as large
                self._adam(run, grad, step + 1, 2.0 * self.learning_rate, _ADAM_EPS / 2)
        return ended

    def _hinge(self, logits: Tensor, run: _Run) -> tuple[Tensor, Tensor, Tensor]:
        """Margins (N,), which rows are adversarial (N,), the hinge's gradient (N, C).

        The hinge is ``c · max(κ - margin, 0)``; the margin is
        :func:`~vulnscope.attacks.losses.margin`'s, against the largest other logit, and
        the hinge's gradient is ``±c`` on the two logits it compares where it is active
        (written out, it costs less than differentiating the margin). A row is adversarial
        when the model's class has changed (the target is reached) with a margin of at
        least ``κ``: for ``κ > 0`` the margin says both; at ``κ = 0`` a tie
        goes, as in ``argmax``, to the class of lower index.
        """
        own = (run.y if run.target is None else run.target)[:, None]
        # argmax, not max(dim): with two threads on a busy machine, max(dim) waits on the
        # second thread even for a few rows (8 ms for 4 of them, against 5 us)
        rival = logits.scatter(1, own, -math.inf).argmax(dim=1, keepdim=True)
        margins = logits.gather(1, rival) - logits.gather(1, own)
        # the logit the attack raises, and the one it lowers
        up, down = (own, rival) if run.target is None else (rival, own)
        if run.target is not None:
            margins = margins.neg_()
        if self.confidence > 0:
            adv = margins >= self.confidence
        else:
            adv = (margins > 0) | ((margins == 0) & (down < up))
        active = torch.where(margins < self.confidence, run.const[:, None], 0.0)
        push = torch.zeros_like(logits).scatter_(1, up, active)
        return margins[:, 0], adv[:, 0], push.scatter_(1, down, active.neg_())

    def _record(self, run: _Run, adv: Tensor, x_adv: Tensor) -> None:
        """Keep each row's smallest adversarial iterate."""
        hits = adv.nonzero()[:, 0]
        if hits.numel() > 0:
            point = x_adv.index_select(0, hits)
            norms = lp_norm(point - run.x.index_select(0, hits), self.norm)
            better = norms < run.best_norm.index_select(0, hits)
            rows = hits[better]
            run.best_norm.index_copy_(0, rows, norms[better])
            run.best.index_copy_(0, rows, point[better])

    @staticmethod
    def _adam(run: _Run, grad: Tensor, t: int, size: float, eps: float) -> None:
        """Adam's ``t``-th step of ``size`` on every row; uses up ``grad``.

        Kingma and Ba (2015). The moments are kept divided by ``1 - β`` and the bias
        corrections are folded into the step size and ``ε`` (the form their Section 2
        gives), the same update in fewer passes. Only unfused operations: a fused kernel
        (an add with a factor, ``addcmul``, ``addcdiv``) may round differently in its
        vectorised body and in its scalar tail, which would make a sample's result depend
        on its place in the batch.
        """
        run.m.mul_(_BETA1).add_(grad)
        run.v.mul_(_BETA2).add_(grad.square_())
        root = math.sqrt((1.0 - _BETA2**t) / (1.0 - _BETA2))
        denominator = run.v.sqrt().add_(eps * root)
        size *= (1.0 - _BETA1) * root / (1.0 - _BETA1**t)
        run.w.sub_(run.m.div(denominator).mul_(size))

    def _next_run(self, search: _Search, found: Tensor, finished: int, result: Tensor) -> _Search:
        """Move every search on after its ``finished``-th run; retire the samples done."""
        if self.norm == "l2":
            self._next_const(search, found, finished)
        else:
            self._next_tau(search, found)
        narrow = search.high - search.low <= _CONVERGED[self.norm] * search.high
        done = search.high.isfinite() & narrow
        if finished >= self.binary_search_steps:
            done |= True
        if self.norm == "linf":
            done |= search.high.isinf()  # the unpenalised run found nothing; no run would
        if self.eps is not None:
            done |= search.best_norm <= self.eps
        if bool(done.any()):
            hit = done & search.best_norm.isfinite()
            result[search.index[hit]] = search.best[hit]
            search = search.keep(~done)
        return search

    def _next_const(self, search: _Search, found: Tensor, finished: int) -> None:
        """L2: bracket ``c``; grow it tenfold until the first success, then bisect."""
        search.high = torch.where(found, torch.minimum(search.high, search.const), search.high)
        search.low = torch.where(found, search.low, torch.maximum(search.low, search.const))
        bisected = (search.low + search.high) / 2
        following = torch.where(search.high.isinf(), search.const * 10.0, bisected)
        if self.binary_search_steps >= 10 and finished == self.binary_search_steps - 1:
            # as in the reference code: the last run repeats the smallest c that succeeded
            following = search.high.clamp_max(_LARGEST_CONST)
        search.const = following

    def _next_tau(self, search: _Search, found: Tensor) -> None:
        """L∞: bisect ``tau`` between the largest failure and the smallest distance found."""
        failed = ~found & search.tau.isfinite()
        search.high = search.best_norm.clone()
        search.low = torch.where(failed, torch.maximum(search.low, search.tau), search.low)
        # a run beat a tau that failed before: that failure was the optimiser's, start over
        search.low = search.low.masked_fill_(search.low >= search.high, 0.0)
        search.tau = (search.low + search.high) / 2
        radius = per_sample(search.tau.clamp_max(self.bounds[1] - self.bounds[0]), search.x)
        search.start = torch.minimum(
            torch.maximum(search.best, search.x - radius), search.x + radius
        )
