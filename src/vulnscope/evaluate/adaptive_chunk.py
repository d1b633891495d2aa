"""The adaptive cascade on one chunk of points at every budget.

The standard cascade (:mod:`vulnscope.evaluate.cascade`) spends most of its time on the
points it cannot break: every robust point gets APGD-T once per target class, FAB-T once
per target class and 5000 Square queries. Liu et al. (2022), "Practical Evaluation of
Adversarial Robustness via Adaptive Auto Attack" (A³), show that an evaluation that adapts
to what it has learned reaches the same robust accuracy with a fraction of the work. This
cascade runs the same attacks, scheduled from what the earlier steps found:

1. **Certified points are not attacked.** IBP, then CROWN (:func:`vulnscope.certify.certify`;
   on networks where it costs less than the attacks it spares) prove some points robust;
   an attack cannot break them. CROWN runs on a random probe first and goes on only if
   it certifies one. A point certified at one budget is the only candidate at the next,
   larger one.
2. **The lead attack** (the first untargeted white-box attack, APGD-CE by default) runs on
   every other correct point, started as in the standard cascade; a point it breaks at
   one budget stays broken, by the same example, at the larger ones. Two adaptive starts
   were tried and lost points to random starts, so neither is used: the mean
   perturbation of the broken points of a point's class (A³'s adaptive initialisation
   carried to input space; 125 of 196 points broken on the digits MLP at L∞ 0.1 against
   133), and, in a curve, the point's best iterate at the smaller budget scaled to the
   larger ball (3 of 397 points fewer at L2 0.75 on the digits CNN).
3. **The targeted attack** (APGD-T) takes each point's target directions from what the
   lead attack found: the classes in the order of the logits at its best iterate, not
   at the clean input (A³ adapts the output-space direction its starts follow); and it
   spends its
   budget where points can be broken: a point whose normalised margin there (the DLR
   ratio) lies far below the margins of the points broken so far is hopeless and
   discarded (A³'s online statistics-based discarding), and the others get the
   ``TOP_TARGETS`` most likely targets.
4. **The later attacks** run at full strength on the survivors closest to the boundary
   and a random subset of the others (FAB-T), or, when their time is per query whatever
   the batch (Square), on every survivor with a fifth of their queries, unless a
   clean-input masking symptom was seen; a break sends them back in full.
5. **The schedule is checked.** A random subset of the points the targeted attack
   worked on runs at full strength (every target, no discarding); if the subset shows the
   schedule would have missed a point, or a later attack breaks a point of its subset,
   that attack runs at full strength on every point. So on a model whose gradients
   mislead (where Square breaks what APGD cannot) the evaluation falls back to the
   standard cascade's strength.

The FGSM single-step check and the clean-input masking checks run as in the standard
cascade; the chunk is a :class:`~vulnscope.evaluate.pieces.CascadeChunk`, merged by
:func:`~vulnscope.evaluate.merge_cascade_chunks` like the standard cascade's.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._validation import check_labels_in_range, check_logits
from vulnscope.attacks import FGSM, Attack
from vulnscope.certify import certify
from vulnscope.certify.graph import read_graph
from vulnscope.evaluate.cascade_attacks import CascadeAttack
from vulnscope.evaluate.masking import MaskingSymptoms, masking_symptoms
from vulnscope.evaluate.pieces import (
    CLEAN,
    SINGLE_STEP_CHECK,
    CascadeBudget,
    CascadeChunk,
    StageReport,
)
from vulnscope.models.state import preserved_model_state

__all__ = ["CHECK_FRACTION", "CHECK_MINIMUM", "HOPELESS_MARGIN", "TOP_TARGETS"]

TOP_TARGETS = 5
"""Target classes the targeted attack tries per hopeful point (the check subset: all).
On the embedded digits models, every point APGD-T breaks after APGD-CE is broken toward
one of the five classes the APGD-CE iterate ranks first (L∞ 0.05-0.2, L2 0.25-1)."""

HOPELESS_MARGIN = -0.5
"""The DLR ratio below which a point is never hopeful: on the embedded digits models every
point APGD-T breaks after APGD-CE lies above -0.4 (measured at L∞ 0.1 and L2 0.5). The
statistics lower it: a point is discarded only below twice the lowest ratio of the points
the targeted attack has broken."""

CROWN_WORK = 1 << 20
"""Largest CROWN cost per point (:meth:`~vulnscope.certify.graph.Graph.backward_work`)
for which the cascade certifies with CROWN after IBP. The digits MLP (7e4) is far below:
CROWN certifies a point in less time than the attacks it spares it. The digits CNN
(7e6) is above: certifying the 397 digits at L∞ 0.05 took longer than every attack of
that budget together, so it gets IBP alone."""

CHECK_FRACTION = 0.1
"""Fraction of the points in play that each check runs at full strength on."""

CHECK_MINIMUM = 8
"""The fewest points a check runs on (all of them, when fewer are in play)."""

LIGHT_QUERIES = 0.2
"""The fraction of its queries a black-box attack spends unless a clean-input masking
symptom was seen. Its time is per query whatever the batch, so it runs on every point
still robust; when it breaks one, it runs again in full on the others."""

CLOSEST_FRACTION = 0.05
"""Fraction of the points in play, the closest to the boundary, that the later attacks
run on besides the random subset (at least ``CHECK_MINIMUM // 2``)."""


@dataclass
class _State:
    """What the chunk has learned, carried from budget to budget."""

    names: list[str | None]
    x_adv: Tensor  # (B, ...) the adversarial example of each broken point
    best: Tensor  # (B, ...) each robust point's highest-loss iterate of the lead attack
    has_best: Tensor  # (B,) bool
    certified: Tensor  # (B,) bool, certified at the last budget
    can_certify: bool
    use_crown: bool  # CROWN certified a point of its last probe (IBP alone otherwise)
    ratio: Tensor  # (B,) DLR ratio at the lead attack's best iterate (-inf: not measured)
    suspicious: bool  # a clean-input masking symptom was seen: black-box attacks run in full
    broken_ratios: list[float] = field(default_factory=list)  # DLR ratios the targeted broke


def run_adaptive_chunk(
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
    certify_points: bool,
    on_budget: Callable[[float], None] | None = None,
) -> CascadeChunk:
    """The adaptive cascade on one chunk, on validated arguments (``epsilons`` increasing).

    Args:
        model: maps (B, ...) to logits (B, C); its state is left as found.
        x: the chunk's inputs (B, ...) inside ``bounds``.
        y: its labels (B,).
        norm: ``"linf"`` or ``"l2"``.
        epsilons: budgets, increasing, each > 0.
        seed: seed of every attack and of every random subset.
        stages: the cascade's attacks, in order (:func:`check_cascade`).
        n_target_classes: target classes of the targeted attacks.
        bounds: input bounds.
        certify_points: skip the points CROWN certifies (an ``nn.Module`` that
            :func:`vulnscope.certify.certify` can read; any other is attacked whole).
        on_budget: called with each budget as the chunk finishes it.

    Returns:
        :class:`CascadeChunk`, with each budget's ``x_adv`` (B, ...) in memory.

    """
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
    state = _State(
        names=[None if ok else CLEAN for ok in correct.tolist()],
        x_adv=x.detach().clone(),
        best=x.detach().clone(),
        has_best=torch.zeros_like(correct),
        certified=correct.clone(),
        can_certify=certify_points and isinstance(model, nn.Module),
        use_crown=certify_points and _crown_pays(model, x[:1]),
        ratio=torch.full((x.shape[0],), -math.inf, device=x.device),
        suspicious=any(check.triggered for check in symptoms.checks()),
    )
    outcomes = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the model's outputs look like probabilities")
        for level, eps in enumerate(epsilons):
            budget = _Budget(model, x, y, clean_logits, norm, float(eps), bounds, state)
            outcomes.append(
                budget.run(stages, seed=seed, level=level, n_target_classes=n_target_classes)
            )
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


def dlr_ratio(logits: Tensor, y: Tensor) -> Tensor:
    """(N,) how close each point is to the boundary, on the DLR loss's scale.

    ``(max_{j != y} z_j - z_y) / (z_(1) - z_(3))`` (Croce and Hein 2020's DLR without its
    sign): negative for a correctly classified point, 0 on the boundary, invariant to
    shifting and scaling the logits. With fewer than three classes the denominator is the
    gap between the two logits' magnitudes' sum instead.
    """
    other = logits.clone()
    other.scatter_(1, y[:, None], -math.inf)
    margin = other.amax(1) - logits.gather(1, y[:, None])[:, 0]
    top = logits.sort(dim=1, descending=True).values
    spread = top[:, 0] - top[:, 2] if logits.shape[1] >= 3 else logits.abs().sum(1)
    return margin / spread.clamp_min(1e-12)


class _Budget:
    """One budget of the adaptive cascade on one chunk (see the module docstring)."""

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        clean_logits: Tensor,
        norm: str,
        eps: float,
        bounds: tuple[float, float],
        state: _State,
    ) -> None:
        self.model, self.x, self.y, self.clean_logits = model, x, y, clean_logits
        self.norm, self.eps, self.bounds, self.state = norm, eps, bounds, state
        self.robust = torch.tensor([n is None for n in state.names], device=x.device)
        self.x_adv = state.x_adv.clone()

    def run(
        self, stages: Sequence[CascadeAttack], *, seed: int, level: int, n_target_classes: int
    ) -> CascadeBudget:
        state = self.state
        generator = make_generator(seed * 1000 + level)
        certified = self._certify(generator)
        reports = []
        lead_done = targeted_done = False
        num_classes = self.clean_logits.shape[1]
        for spec in stages:
            attack = spec.build(self.norm, self.eps, seed, num_classes).replace(bounds=self.bounds)
            clock = time.perf_counter()
            rows = (self.robust & ~certified).nonzero()[:, 0]
            if not lead_done and not spec.targeted and not spec.black_box:
                counts = self._lead(attack, rows)
                lead_done = True
            elif spec.targeted and not targeted_done and lead_done:
                count = min(n_target_classes, num_classes - 1)
                counts = self._targeted(attack, rows, count, generator)
                targeted_done = True
            else:
                counts = self._checked(attack, spec.targeted, rows, n_target_classes, generator)
            broken, attacked, forward, gradient = counts
            for index in broken.nonzero()[:, 0].tolist():
                state.names[index] = spec.name
            self.robust &= ~broken
            reports.append(
                StageReport(
                    spec.name,
                    attacked,
                    int(broken.sum()),
                    forward,
                    gradient,
                    time.perf_counter() - clock,
                )
            )
        single_step_broken = single_step_attacked = None
        if lead_done or targeted_done:
            before = self.robust.clone()
            rows = (self.robust & ~certified).nonzero()[:, 0]
            fgsm = FGSM(norm=self.norm, eps=self.eps, bounds=self.bounds)
            broken = self._attack(fgsm, rows)
            for index in broken.nonzero()[:, 0].tolist():
                state.names[index] = SINGLE_STEP_CHECK
            self.robust &= ~broken
            single_step_broken = tuple(broken.tolist())
            single_step_attacked = tuple(before.tolist())
        with preserved_model_state(self.model), torch.no_grad():
            final = check_logits(self.model(self.x_adv), self.x.shape[0]).argmax(1) == self.y
        self.robust &= final | certified
        state.x_adv, state.certified = self.x_adv, certified
        return CascadeBudget(
            eps=self.eps,
            broken_by=tuple(state.names),
            robust=tuple(self.robust.tolist()),
            stages=tuple(reports),
            single_step_broken=single_step_broken,
            single_step_attacked=single_step_attacked,
            certified=tuple(certified.tolist()) if state.can_certify else None,
            x_adv=self.x_adv,
        )

    # -- the steps ---------------------------------------------------------------------

    def _certify(self, generator: torch.Generator) -> Tensor:
        """(B,) the points proved robust at this budget: IBP on all, then CROWN.

        CROWN costs far more than IBP: it runs only on networks whose cost per point is
        at most :data:`CROWN_WORK`, first on a random probe of ``2 * CHECK_MINIMUM``
        points, and on the rest only if it certifies one of them. A budget at which it
        certifies nothing rules it out at the larger ones.
        """
        state = self.state
        certified = torch.zeros_like(self.robust)
        rows = (self.robust & state.certified).nonzero()[:, 0]
        model = self.model
        if not state.can_certify or rows.numel() == 0 or not isinstance(model, nn.Module):
            return certified

        def prove(method: str, chosen: Tensor) -> Tensor:
            return certify(
                model,
                self.x[chosen],
                self.y[chosen],
                norm=self.norm,
                eps=self.eps,
                method=method,
                bounds=self.bounds,
            ).certified.to(chosen.device)

        try:
            proved = prove("ibp", rows)
            certified[rows[proved]] = True
            rows = rows[~proved]
            if state.use_crown and rows.numel():
                order = torch.randperm(rows.numel(), generator=generator).to(rows.device)
                probe, rest = order[: 2 * CHECK_MINIMUM], order[2 * CHECK_MINIMUM :]
                proved = prove("crown", rows[probe])
                certified[rows[probe][proved]] = True
                state.use_crown = bool(proved.any())
                if state.use_crown and rest.numel():
                    proved = prove("crown", rows[rest])
                    certified[rows[rest][proved]] = True
        except Exception:  # certificates only spare work: never fail for them
            # a model certify cannot read (an unsupported layer, a scripted, exported or
            # ONNX model it cannot rebuild, a forward torch.fx cannot trace) is attacked
            # whole, at this budget and the next
            state.can_certify = False
            return torch.zeros_like(self.robust)
        return certified

    def _lead(self, attack: Attack, rows: Tensor) -> tuple[Tensor, int, int, int]:
        """The lead attack on every row, started as in the standard cascade.

        Keeps each row's best iterate, where the targeted attack reads its targets.
        (Starting a row robust at the smaller budget of a curve from its best iterate
        there, scaled to this ball, was tried: on the digits CNN's L2 curve it left 3 of
        397 points robust at 0.75 that random starts broke.)
        """
        state = self.state
        broken = torch.zeros_like(self.robust)
        if rows.numel() == 0:
            return broken, 0, 0, 0
        result = attack(self.model, self.x[rows], self.y[rows])
        hit = result.success
        self.x_adv[rows[hit]] = result.x_adv[hit]
        broken[rows[hit]] = True
        # APGD returns a point it did not break at its highest-loss iterate
        state.best[rows[~hit]] = result.x_adv[~hit]
        state.has_best[rows[~hit]] = True
        return broken, rows.numel(), result.forward_evals, result.gradient_evals

    def _targeted(
        self, attack: Attack, rows: Tensor, count: int, generator: torch.Generator
    ) -> tuple[Tensor, int, int, int]:
        """Targets in the order of the best iterate's logits; hopeless points discarded.

        One call on every (point, target) pair scheduled: the hopeful points with their
        ``TOP_TARGETS`` first targets, and a random check subset with every target. If
        the subset was broken where the schedule would not have looked (a hopeless point,
        or a later target), a second call runs every target on every other point.
        """
        state = self.state
        broken = torch.zeros_like(self.robust)
        if rows.numel() == 0 or count <= 0:
            return broken, 0, 0, 0
        points = torch.where(
            _rows(state.has_best[rows], self.x[rows]), state.best[rows], self.x[rows]
        )
        with preserved_model_state(self.model), torch.no_grad():
            logits = check_logits(self.model(points), rows.numel())
        ratio = dlr_ratio(logits, self.y[rows])
        state.ratio[rows] = ratio.to(state.ratio.dtype)
        others = logits.clone()
        others.scatter_(1, self.y[rows][:, None], -math.inf)
        targets = others.argsort(dim=1, descending=True)[:, :count]
        floor = min([HOPELESS_MARGIN, *(2.0 * r for r in state.broken_ratios)])
        check = _subset(rows, generator)
        top = torch.arange(count, device=rows.device)[None, :] < TOP_TARGETS
        scheduled = (ratio >= floor)[:, None] & top
        pairs = scheduled | check[:, None]
        hit, attacked, forward, gradient = self._pairs(attack, rows, targets, pairs)
        forward += rows.numel()
        if bool((hit & check[:, None] & ~scheduled).any()):
            rest = ~check[:, None] & ~pairs & ~hit.any(1, keepdim=True)
            more, extra, f, g = self._pairs(attack, rows, targets, rest)
            hit, attacked, forward, gradient = (
                hit | more,
                attacked + extra,
                forward + f,
                gradient + g,
            )
        broken[rows[hit.any(1)]] = True
        state.broken_ratios += ratio[hit.any(1)].tolist()
        return broken, attacked, forward, gradient

    def _checked(
        self,
        attack: Attack,
        targeted: bool,
        rows: Tensor,
        n_target_classes: int,
        generator: torch.Generator,
    ) -> tuple[Tensor, int, int, int]:
        """A later attack on a random subset; on every row if it breaks any of the subset.

        A targeted attack takes the clean logits' 2nd, 3rd... classes (as AutoAttack),
        every (point, target) pair in one call. The subset is random, plus the points
        whose DLR ratio at the lead attack's best iterate is highest (the closest to the
        boundary); when it breaks a point, the attack runs on every other point. A
        black-box attack with a query budget runs on every point instead, with
        ``LIGHT_QUERIES`` of its queries unless a masking symptom was seen, and in full
        on the rest when that breaks a point.
        """
        broken = torch.zeros_like(self.robust)
        if rows.numel() == 0:
            return broken, 0, 0, 0
        if targeted:
            order = self.clean_logits[rows].argsort(dim=1, descending=True)
            targets = order[:, 1 : min(n_target_classes, order.shape[1] - 1) + 1]
        else:
            targets = None
        width = 1 if targets is None else targets.shape[1]
        queries = attack.get_params().get("queries")
        if attack.gradient_free and isinstance(queries, int):
            # time per query, whatever the batch: fewer queries on every point
            light = attack
            if not self.state.suspicious:
                light = attack.replace(queries=max(1, math.ceil(LIGHT_QUERIES * queries)))
            check = torch.ones(rows.numel(), width, dtype=torch.bool, device=rows.device)
            hit, attacked, forward, gradient = self._pairs(light, rows, targets, check)
            if bool(hit.any()) and light is not attack:
                check = ~hit.any(1, keepdim=True).expand(-1, width)
                more, extra, f, g = self._pairs(attack, rows, targets, check)
                hit, attacked, forward, gradient = (
                    hit | more,
                    attacked + extra,
                    forward + f,
                    gradient + g,
                )
            broken[rows[hit.any(1)]] = True
            return broken, attacked, forward, gradient
        # the random subset, and the points closest to the boundary
        check = _subset(rows, generator)
        closest = max(CHECK_MINIMUM // 2, math.ceil(CLOSEST_FRACTION * rows.numel()))
        check[self.state.ratio[rows].argsort(descending=True)[:closest]] = True
        check = check[:, None].expand(-1, width)
        hit, attacked, forward, gradient = self._pairs(attack, rows, targets, check)
        if bool(hit.any()):
            rest = ~check & ~hit.any(1, keepdim=True)
            more, extra, f, g = self._pairs(attack, rows, targets, rest)
            hit, attacked, forward, gradient = (
                hit | more,
                attacked + extra,
                forward + f,
                gradient + g,
            )
        broken[rows[hit.any(1)]] = True
        return broken, attacked, forward, gradient

    # -- running attacks ---------------------------------------------------------------

    def _pairs(
        self, attack: Attack, rows: Tensor, targets: Tensor | None, chosen: Tensor
    ) -> tuple[Tensor, int, int, int]:
        """``attack`` on the chosen (point, target) pairs, in one call.

        Args:
            attack: untargeted when ``targets`` is None.
            rows: (R,) the points.
            targets: (R, K) each point's targets, or None.
            chosen: (R, K) which pairs to run (K = 1 without targets).

        Returns:
            (R, K) the pairs that broke their point, the pairs run, and the forward and
            gradient counts. A targeted run breaks a point it sends to any class but the
            true one (as AutoAttack); the first example found for a point is kept.

        """
        hit = torch.zeros_like(chosen)
        where = chosen.nonzero()
        if where.shape[0] == 0:
            return hit, 0, 0, 0
        points = rows[where[:, 0]]
        target = None if targets is None else targets[where[:, 0], where[:, 1]]
        result = attack(self.model, self.x[points], self.y[points], target=target)
        forward = result.forward_evals
        if target is None:
            success = result.success
        else:
            with preserved_model_state(self.model), torch.no_grad():
                logits = check_logits(self.model(result.x_adv), points.numel())
            success = logits.argmax(1) != self.y[points]
            forward += points.numel()
        hit[where[success, 0], where[success, 1]] = True
        # the first adversarial example of each point (pairs are in row order)
        found = success.nonzero()[:, 0].flip(0)
        self.x_adv[points[found]] = result.x_adv[found]
        return hit, points.numel(), forward, result.gradient_evals

    def _attack(self, attack: Attack, rows: Tensor) -> Tensor:
        """An untargeted ``attack`` on ``rows``: (B,) the points it broke (examples kept)."""
        broken = torch.zeros_like(self.robust)
        hit = self._pairs(
            attack, rows, None, torch.ones(rows.numel(), 1, dtype=torch.bool, device=rows.device)
        )[0]
        broken[rows[hit[:, 0]]] = True
        return broken


def _crown_pays(model: Callable[[Tensor], Tensor], example: Tensor) -> bool:
    """CROWN's cost per point is at most :data:`CROWN_WORK` (a model it can read)."""
    if not isinstance(model, nn.Module) or example.shape[0] == 0:
        return False
    try:
        return read_graph(model, example).backward_work() <= CROWN_WORK
    except Exception:  # any model certify cannot read gets IBP's try alone
        return False


def _subset(rows: Tensor, generator: torch.Generator) -> Tensor:
    """(R,) bool: a seeded random CHECK_FRACTION of ``rows`` (R,), at least CHECK_MINIMUM."""
    count = rows.numel()
    size = min(count, max(CHECK_MINIMUM, math.ceil(CHECK_FRACTION * count)))
    chosen = torch.zeros(count, dtype=torch.bool)
    chosen[torch.randperm(count, generator=generator)[:size]] = True
    return chosen.to(rows.device)


def _rows(flags: Tensor, like: Tensor) -> Tensor:
    """(R,) flags shaped to broadcast over ``like`` (R, ...)."""
    return flags.reshape((-1,) + (1,) * (like.dim() - 1))
