"""DeepFool: repeated steps onto the closest linearised decision boundary."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._validation import check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.boundary import (
    boundary_distances,
    linearise,
    linearise_target,
    step_onto,
)
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.norms import lp_norm
from vulnscope.attacks.refine import bisect_to_boundary, fit_in_cap

__all__ = ["DeepFool", "deepfool_points"]

_PUSH = 1e-4


class DeepFool(Attack):
    r"""DeepFool: step onto the closest linearised decision boundary until the class flips.

    Moosavi-Dezfooli, Fawzi and Frossard (2016), "DeepFool: a simple and accurate method to
    fool deep neural networks" (CVPR). At the current point, each boundary between the true
    class ``y`` and a candidate class ``k`` is linearised, ``g_k + <w_k, δ> = 0`` with
    ``g_k = z_k - z_y`` and ``w_k`` its input gradient; the closest one, at distance
    ``|g_k| / |w_k|_q`` (``q`` the dual norm), is stepped onto:

    .. math:: r = \frac{|g_k|}{\|w_k\|_2^2} w_k \ (L_2), \qquad
        r = \frac{|g_k|}{\|w_k\|_1} \operatorname{sign} w_k \ (L_\infty).

    The steps accumulate into ``r_total`` and the next point is
    ``clip(x + (1 + overshoot) r_total)``; each step lands ``1e-4 |r_total|`` beyond its
    hyperplane, so that a trajectory whose steps the clipping shortens still crosses
    (Foolbox and the authors' code add ``1e-4`` outright). The candidates are the
    ``candidates`` most likely classes at the clean input (all by default), as in Foolbox;
    per step, one forward pass with a graph, one backward pass per rival class and one
    forward pass to check, and a sample leaves the batch at its first adversarial point.
    Targeted, the only boundary is the target's: between ``target`` and the class it must
    beat at the current point (one backward pass a step).

    A minimal attack: the result is the first adversarial point, then (``refine > 0``)
    shrunk towards ``x`` by ``refine`` bisection steps along the segment ``x -> x_adv``
    (forward passes only), which removes most of the overshoot; ``refine=0`` returns
    DeepFool's own point. A sample not fooled within ``steps`` returns ``x``; so does one
    whose point lies outside the cap ``eps`` unless its projection onto the eps-ball is
    adversarial too. Deterministic.

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        eps: optional cap on the perturbation (the result is projected onto the ball).
        steps: most linearisation steps per sample (default 50).
        overshoot: relative overshoot ``(1 + overshoot) r_total`` (default 0.02).
        candidates: the number of most likely classes considered (>= 2), ``None`` for all.
        refine: bisection steps towards ``x`` after the attack (0 to skip).
        targeted: move across the boundary of ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import DeepFool
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x = torch.full((2, 1, 2, 2), 0.5)
        >>> y = model(x).argmax(1)
        >>> res = DeepFool(norm="l2", overshoot=0.02, steps=50)(model, x, y)
        >>> bool(res.success.all()), res.norms.shape
        (True, torch.Size([2]))

    """

    supported_norms = ("l2", "linf")
    requires_eps = False

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int | None = None,
        refine: int = 10,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.steps = check_int(steps, "steps")
        self.overshoot = check_real(overshoot, "overshoot", minimum=0.0)
        self.candidates = (
            None if candidates is None else check_int(candidates, "candidates", minimum=2)
        )
        self.refine = check_int(refine, "refine", minimum=0)

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """DeepFool on every sample not yet adversarial, then the refinement."""
        x_adv, found = self._deepfool(model, x, y, target)
        rows = found.nonzero()[:, 0]
        if rows.numel() == 0:
            return x_adv
        ts = None if target is None else target[rows]
        if self.refine > 0:
            x_adv[rows] = bisect_to_boundary(
                model, x[rows], x_adv[rows], y[rows], ts, steps=self.refine, bounds=self.bounds
            )
        if self.eps is not None:
            x_adv[rows] = fit_in_cap(
                model,
                x[rows],
                x_adv[rows],
                y[rows],
                ts,
                eps=self.eps,
                norm=self.norm,
                bounds=self.bounds,
            )
        return x_adv

    def _deepfool(
        self, model: CountingModel, x: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The DeepFool iterations with this attack's settings."""
        return deepfool_points(
            model,
            x,
            y,
            target,
            norm=self.norm,
            steps=self.steps,
            overshoot=self.overshoot,
            candidates=self.candidates,
            bounds=self.bounds,
        )


def deepfool_points(
    model: CountingModel,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    *,
    norm: str,
    steps: int,
    overshoot: float,
    candidates: int | None,
    bounds: tuple[float, float],
    basis: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The DeepFool iterations: first adversarial points (else ``x``) and where found.

    The loop of :class:`DeepFool`, on validated inputs, for callers that need it outside
    the attack contract. ``basis`` (N, D, m), orthonormal columns, restricts every step to
    the subspace each sample's columns span: the boundary gradients are projected with
    ``P = S S^T`` before the closest boundary is chosen and stepped onto, which is
    DeepFool in that subspace (the semi-random noise of Fawzi, Moosavi-Dezfooli and
    Frossard 2016). ``bounds`` may be infinite (no box).

    Args:
        model: the counted model.
        x: inputs (N, ...).
        y: true labels (N,).
        target: target labels (N,), or ``None`` when untargeted.
        norm: ``"l2"`` or ``"linf"``.
        steps: most linearisation steps.
        overshoot: relative overshoot.
        candidates: most likely classes considered, ``None`` for all.
        bounds: the box every iterate is clipped to.
        basis: (N, D, m) subspace bases with ``D`` the flattened feature size, or ``None``.

    Returns:
        ``(points, found)``: (N, ...) first adversarial points (``x`` where none was
        found) and (N,) bool.

    """
    result, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        logits = model(x)
    hit = is_adversarial(logits, y, target)
    index = (~hit).nonzero()[:, 0]
    x0, ys = x[index], y[index]
    ts = None if target is None else target[index]
    bases = None if basis is None else basis[index]
    logits = logits[index]
    if ts is None:
        # The most likely other classes at the clean point, as Foolbox takes them.
        classes = logits.shape[1] if candidates is None else candidates
        others = logits.scatter(1, ys[:, None], float("-inf"))
        up = others.topk(min(classes, logits.shape[1]) - 1, dim=1).indices
    else:
        up = ts[:, None]
    current, total = x0.clone(), torch.zeros_like(x0.flatten(1))
    for step in range(steps + 1):
        if step > 0:
            with torch.no_grad():
                logits = model(current)
            hit = is_adversarial(logits, ys, ts)
            if bool(hit.any()):
                result[index[hit]], found[index[hit]] = current[hit], True
                keep = ~hit
                index, x0, ys, up = index[keep], x0[keep], ys[keep], up[keep]
                current, total = current[keep], total[keep]
                ts = None if ts is None else ts[keep]
                bases = None if bases is None else bases[keep]
        if step == steps or index.numel() == 0:
            break
        if ts is None:
            gaps, grads = linearise(model, current, up, ys)
        else:  # the target against the class it must beat at the current point
            gaps, grads = linearise_target(model, current, up[:, 0])
        if bases is not None:
            grads = (grads @ bases) @ bases.transpose(1, 2)
        closest = boundary_distances(gaps, grads, norm).argmin(dim=1)
        pick = torch.arange(index.numel(), device=x.device)
        # Clipping eats part of every step towards a bound, so a trajectory along one
        # can approach the boundary geometrically without crossing; landing a little
        # beyond it (1e-4 of the way come so far; Foolbox adds 1e-4 absolute) ends that.
        push = _PUSH * lp_norm(total, norm)
        total += step_onto(gaps[pick, closest], grads[pick, closest], norm, beyond=push)
        current = (x0 + (1.0 + overshoot) * total.view_as(x0)).clamp(*bounds)
    return result, found
