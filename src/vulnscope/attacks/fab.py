"""FAB: the Fast Adaptive Boundary attack."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vulnscope._validation import check_fraction, check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.boundary import (
    boundary_distances,
    hyperplane_box_step,
    linearise,
    linearise_target,
)
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.norms import lp_norm
from vulnscope.attacks.refine import fit_in_cap
from vulnscope.errors import InvalidArgumentError

__all__ = ["FAB", "fab_step"]

_TINY = 1e-12


def fab_step(
    x0: Tensor,
    x1: Tensor,
    gap: Tensor,
    grad: Tensor,
    *,
    norm: str,
    bounds: tuple[float, float],
    alpha_max: float,
    eta: float,
) -> Tensor:
    r"""One FAB step from ``x1`` towards the hyperplane ``gap + <grad, z - x1> = 0``.

    Both the current point and the original point are projected onto the hyperplane
    intersected with the box (:func:`~vulnscope.attacks.boundary.hyperplane_box_step`),
    giving steps ``δ`` and ``δ_orig``; the new point is the convex combination

    .. math:: \mathrm{clip}\big((1 - \alpha)(x_1 + \eta \delta)
        + \alpha (x_0 + \eta \delta_{orig})\big), \qquad
        \alpha = \min\Big(\frac{\|\delta\|}{\|\delta\| + \|\delta_{orig}\|},
        \alpha_{max}\Big),

    which leans towards the original point when the current one is far from the boundary.

    Args:
        x0: original points (n, D), flattened.
        x1: current points (n, D).
        gap: (n,) logit gaps at ``x1``.
        grad: (n, D) their gradients.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        bounds: input bounds.
        alpha_max: the largest bias towards ``x0``.
        eta: extrapolation past the hyperplane (>= 1).

    Returns:
        (n, D) the next points.

    """
    low, high = bounds
    n = x0.shape[0]
    residual = torch.cat([-gap, -gap - (grad * (x0 - x1)).sum(dim=1)])
    points = torch.cat([x1, x0])
    steps = hyperplane_box_step(
        torch.cat([grad, grad]), residual, low - points, high - points, norm
    )
    own, orig = steps[:n], steps[n:]
    size_own, size_orig = lp_norm(own, norm), lp_norm(orig, norm)
    alpha = (size_own / (size_own + size_orig).clamp_min(_TINY)).clamp(max=alpha_max)[:, None]
    moved = (1.0 - alpha) * (x1 + eta * own) + alpha * (x0 + eta * orig)
    return moved.clamp(low, high)


class FAB(Attack):
    r"""The Fast Adaptive Boundary attack: minimal Lp adversarial examples (L∞, L2, L1).

    Croce and Hein (2020), "Minimally distorted adversarial examples with a fast adaptive
    boundary attack" (ICML). At the current point ``x_1`` every decision boundary between
    the true class and another class is linearised; the closest one (``|g| / |w|_q``)
    defines a hyperplane, onto which both ``x_1`` and the original point ``x_0`` are
    projected exactly within the input box, and the step combines the two with a bias
    ``alpha <= alpha_max`` towards ``x_0`` and an extrapolation ``eta`` (:func:`fab_step`).
    Each adversarial point found is recorded if it is the smallest so far, and the search
    then backs off towards the original point, ``x_1 <- x_0 + beta (x_1 - x_0)``, so that it
    keeps closing in on the boundary from the near side. Per step: one forward pass with
    a graph, one backward pass per other class (one when targeted), and one check.

    Restarts after the first start at a random point at distance ``min(u, eps) / 2`` from
    ``x_0`` (``u`` the smallest perturbation found so far, ``eps`` the cap; with neither,
    the linearised distance to the boundary at ``x_0``), as in the paper. Each sample keeps
    the smallest adversarial example of all its runs.

    Targeted (FAB-T, for one target class per sample, as AutoAttack runs it once per
    target rank): the only boundary is the target's, and success means reaching
    ``target``. AutoAttack linearises the boundary between the true class and the target
    and counts any misclassification as a success; here the boundary is between the
    target and its strongest rival at the current point, smoothed over the near-tied
    rivals until the first success (:func:`~vulnscope.attacks.boundary.linearise_target`):
    with the hard rival, a sample whose target region is entered across two boundaries at
    once can cycle between them and never arrive.

    With a cap ``eps``, a sample stops as soon as it has an adversarial example inside the
    ball (AutoAttack's semantics: success within eps, not the smallest such point), and
    one found only outside the ball gives way to its projection if that is adversarial,
    else to ``x``; without a cap, every sample runs every step.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: optional cap on the perturbation.
        steps: iterations per run (default 100).
        restarts: runs per sample, the first from ``x`` (default 1).
        alpha_max: largest bias of a step towards the original point, in [0, 1].
        eta: extrapolation past the hyperplane, >= 1 (default 1.05).
        beta: back-off towards the original point after a success, in (0, 1].
        targeted: move towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        seed: seed of the random restarts.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import FAB
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x = torch.full((2, 1, 2, 2), 0.5)
        >>> y = model(x).argmax(1)
        >>> res = FAB(norm="linf", steps=20)(model, x, y)
        >>> bool(res.success.all())
        True

    """

    supported_norms = ("linf", "l2", "l1")
    requires_eps = False

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 100,
        restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=seed)
        self.steps = check_int(steps, "steps")
        self.restarts = check_int(restarts, "restarts")
        self.alpha_max = check_real(alpha_max, "alpha_max", minimum=0.0)
        if self.alpha_max > 1.0:
            raise InvalidArgumentError(f"alpha_max must be in [0, 1], got {self.alpha_max}")
        self.eta = check_real(eta, "eta", minimum=1.0)
        self.beta = check_fraction(beta, "beta")

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Restarts of FAB on the samples not yet adversarial; each keeps its smallest."""
        n = x.shape[0]
        with torch.no_grad():
            logits = model(x)
        todo = ~is_adversarial(logits, y, target)
        flat = x.flatten(1)
        best = flat.clone()
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        scale = torch.full_like(best_norm, math.inf)
        cap = math.inf if self.eps is None else self.eps
        if target is None:
            # Every class but the true one (FAB linearises all the boundaries).
            others = torch.arange(logits.shape[1] - 1, device=x.device)[None, :]
            up = others + (others >= y[:, None]).long()
        else:
            up = target[:, None]
        for restart in range(self.restarts):
            # Without a cap every sample runs again, to find a smaller perturbation.
            rows = (todo & ((best_norm > cap) | (self.eps is None))).nonzero()[:, 0]
            if rows.numel() == 0:
                break
            start = flat[rows]
            if restart > 0:
                radius = torch.minimum(best_norm[rows], torch.full_like(best_norm[rows], cap))
                radius = torch.where(torch.isinf(radius), scale[rows], radius) / 2
                start = self._random_start(start, radius, generator)
            ts = None if target is None else target[rows]
            self._single_run(
                model,
                x.shape,
                rows,
                flat[rows],
                start,
                y[rows],
                ts,
                up[rows],
                best=best,
                best_norm=best_norm,
                scale=scale if restart == 0 else None,
            )
        found = torch.isfinite(best_norm).nonzero()[:, 0]
        x_adv = best.view_as(x).clone()
        if self.eps is not None and found.numel() > 0:
            x_adv[found] = fit_in_cap(
                model,
                x[found],
                x_adv[found],
                y[found],
                None if target is None else target[found],
                eps=self.eps,
                norm=self.norm,
                bounds=self.bounds,
            )
        return x_adv

    def _random_start(self, x0: Tensor, radius: Tensor, generator: torch.Generator) -> Tensor:
        """Points at distance ``radius`` (n,) from ``x0`` (n, D), clipped to the bounds."""
        if self.norm == "linf":
            noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            noise = 2.0 * noise - 1.0
        else:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        direction = noise / lp_norm(noise, self.norm).clamp_min(_TINY)[:, None]
        finite = torch.where(torch.isfinite(radius), radius, torch.zeros_like(radius))
        return (x0 + finite[:, None] * direction).clamp(*self.bounds)

    def _single_run(
        self,
        model: CountingModel,
        shape: torch.Size,
        index: Tensor,
        x0: Tensor,
        x1: Tensor,
        y: Tensor,
        target: Tensor | None,
        up: Tensor,
        *,
        best: Tensor,
        best_norm: Tensor,
        scale: Tensor | None,
    ) -> None:
        """One FAB run of ``steps`` steps; records improvements in ``best`` and ``best_norm``.

        ``up`` (n, K) are the classes whose boundaries count (targeted: the target).
        ``scale``, if given, receives the linearised distance to the boundary at the first
        point of each row (the restart radius when nothing else is known).
        """
        view = (-1, *shape[1:])
        for step in range(self.steps):
            if target is None:
                gaps, grads = linearise(model, x1.view(view), up, y)
            else:  # smooth until the first success: see linearise_target
                smooth = ~torch.isfinite(best_norm[index])
                gaps, grads = linearise_target(model, x1.view(view), up[:, 0], smooth=smooth)
            distances = boundary_distances(gaps, grads, self.norm)
            closest = distances.argmin(dim=1)
            if scale is not None and step == 0:
                scale[index] = distances.min(dim=1).values.to(scale.dtype)
            pick = torch.arange(index.numel(), device=x0.device)
            x1 = fab_step(
                x0,
                x1,
                gaps[pick, closest],
                grads[pick, closest],
                norm=self.norm,
                bounds=self.bounds,
                alpha_max=self.alpha_max,
                eta=self.eta,
            )
            with torch.no_grad():
                hit = is_adversarial(model(x1.view(view)), y, target)
            if not bool(hit.any()):
                continue
            size = lp_norm(x1 - x0, self.norm)
            better = hit & (size < best_norm[index])
            best[index[better]] = x1[better]
            best_norm[index[better]] = size[better]
            x1 = torch.where(hit[:, None], x0 + self.beta * (x1 - x0), x1)
            if self.eps is None:
                continue
            done = best_norm[index] <= self.eps
            if bool(done.any()):
                keep = ~done
                index, x0, x1, y, up = index[keep], x0[keep], x1[keep], y[keep], up[keep]
                target = None if target is None else target[keep]
                if index.numel() == 0:
                    return
