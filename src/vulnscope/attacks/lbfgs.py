"""The box-constrained L-BFGS attack of Szegedy et al.: the first minimal adversarial attack."""

from __future__ import annotations

import math

import numpy as np
import torch
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from torch import Tensor

from vulnscope._validation import check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial

__all__ = ["LBFGS"]

_GROWTH = 10.0  # the search over c moves by this factor until it has a bracket
_CONVERGED = 1.01  # a bracket on c this narrow (as a ratio) ends the search


def _loss(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Targeted: cross-entropy towards ``target``; untargeted: ``-log(1 - p_y)``."""
    total = logits.logsumexp(dim=1)
    if target is not None:
        return total - logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], -math.inf)
    return total - others.logsumexp(dim=1)


class LBFGS(Attack):
    r"""The box-constrained L-BFGS attack: the smallest L2 perturbation that changes the class.

    Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow and Fergus (2014), "Intriguing
    properties of neural networks": for a constant ``c > 0``, minimise

    .. math:: c \, \|r\|_2^2 + \mathrm{loss}(x + r) \quad \text{subject to } x + r \in
        [\mathrm{low}, \mathrm{high}]^D

    (the paper's ``|r|``, squared: ``|r|`` has no gradient at ``r = 0``, where every solve
    starts) by L-BFGS-B (``scipy.optimize``, in float64), and search over ``c`` for the largest
    value whose minimiser is adversarial: a larger ``c`` weighs the distance more, so it
    gives a smaller ``r`` (the paper writes "minimum c", but only the largest successful
    ``c`` gives the smallest ``r``). Per sample, ``c`` moves tenfold from
    ``initial_const`` until one minimiser succeeds and another fails, then bisects that
    bracket geometrically; the search stops after ``c_search_steps`` solves, when the
    bracket is within 1%, or once an adversarial point within ``eps`` is found. Each
    sample keeps the smallest adversarial point among all points evaluated.

    The loss is the paper's cross-entropy towards the target when ``targeted``. Untargeted,
    it is ``-log(1 - p_y)``, the cross-entropy towards the set of wrong classes: like the
    targeted loss it is smooth (L-BFGS needs that; a margin's max is not) and bounded below,
    so it stops pulling once the sample is confidently misclassified and the distance term
    then draws the minimiser back towards the boundary. ``-CE(y)`` instead falls without
    bound and keeps pushing past the boundary, and the runner-up class as a target commits
    to one wrong class before the search has seen the others.

    Batching: each solve is one L-BFGS-B problem over the still-searching samples, whose
    objective is the sum of their separable objectives, each sample with its own ``c``, so
    every evaluation is one batched forward and backward pass. Its minimiser is each
    sample's own minimiser, but the path to it is shared: the curvature pairs and line
    searches mix the samples, and the stop is common, so a sample's result depends (to
    the optimiser's tolerance) on its batch-mates. Separate problems per sample would be
    independent of the batch but cost one single-sample model call per evaluation, many
    times slower for a small network. The relative-decrease stop is off (its scale would
    grow with the batch); the solve ends when the projected gradient is below ``1e-7``
    everywhere, the line search stalls, or after ``max_iterations`` iterations.

    Args:
        norm: ``"l2"``, the only norm of this attack.
        eps: optional cap: the result is projected onto the eps-ball, and a sample stops
            searching once it has an adversarial point within ``eps``.
        c_search_steps: L-BFGS-B solves per sample (values of ``c`` tried).
        max_iterations: L-BFGS-B iterations per solve.
        initial_const: the first ``c``, > 0.
        targeted: move towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import LBFGS
        >>> def model(x):  # class 1 while the pixels sum to more than 1
        ...     return torch.stack([torch.zeros(len(x)), 2 * x.flatten(1).sum(1) - 2], 1)
        >>> x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([1])
        >>> res = LBFGS()(model, x, y)
        >>> bool(res.success), round(float(res.norms), 2)  # nearest: every pixel at 0.25
        (True, 0.5)

    """

    supported_norms = ("l2",)
    requires_eps = False

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        c_search_steps: int = 10,
        max_iterations: int = 100,
        initial_const: float = 1.0,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.c_search_steps = check_int(c_search_steps, "c_search_steps")
        self.max_iterations = check_int(max_iterations, "max_iterations")
        self.initial_const = check_real(initial_const, "initial_const", minimum=0.0, exclusive=True)

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """The per-sample searches over ``c`` (see the class docstring)."""
        result = x.flatten(1).clone()
        with torch.no_grad():
            index = (~is_adversarial(model(x), y, target)).nonzero()[:, 0]
        const = torch.full(
            (index.numel(),), self.initial_const, dtype=torch.float64, device=x.device
        )
        good = torch.zeros_like(const)  # the largest c whose minimiser succeeded
        bad = torch.full_like(const, math.inf)  # the smallest c whose minimiser failed
        best, best_norm = result[index], torch.full_like(const, math.inf)
        for solve in range(self.c_search_steps):
            if index.numel() == 0:
                break
            ts = None if target is None else target[index]
            found = self._solve(model, x[index], y[index], ts, const, best, best_norm)
            good = torch.where(found, const, good)
            bad = torch.where(found, bad, const)
            bracketed = (good > 0) & bad.isfinite()
            moved = torch.where(found, const * _GROWTH, const / _GROWTH)
            const = torch.where(bracketed, (good * bad).sqrt(), moved)
            done = bracketed & (bad <= _CONVERGED * good)
            if self.eps is not None:
                done |= best_norm <= self.eps
            if solve == self.c_search_steps - 1:
                done.fill_(True)
            if bool(done.any()):
                hit = done & best_norm.isfinite()
                result[index[hit]] = best[hit]
                keep = ~done
                index, const, good, bad = index[keep], const[keep], good[keep], bad[keep]
                best, best_norm = best[keep], best_norm[keep]
        return result.view_as(x)

    def _solve(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        const: Tensor,
        best: Tensor,
        best_norm: Tensor,
    ) -> Tensor:
        """One L-BFGS-B solve for every row; updates ``best`` in place; whether each succeeded."""
        shape, dtype = x.shape, x.dtype
        origin = x.flatten(1).double()
        low, high = self.bounds

        def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
            point = torch.from_numpy(flat).to(origin.device).view_as(origin)
            moved = point.to(dtype).view(shape).requires_grad_(True)
            logits = model(moved)
            values = _loss(logits, y, target)
            (grad,) = torch.autograd.grad(values.sum(), moved)
            with torch.no_grad():
                r = point - origin
                distance = r.pow(2).sum(1)
                self._record(logits, y, target, point, distance.sqrt(), best, best_norm)
                total = (const * distance).sum() + values.double().sum()
                gradient = 2.0 * const[:, None] * r + grad.flatten(1).double()
            return float(total), gradient.cpu().numpy().ravel()

        # imported here: scipy.optimize takes half a second, paid by every process otherwise
        from scipy.optimize import Bounds, minimize

        # L-BFGS-B's vector operations are too small for BLAS threads: on a busy machine
        # their spin-waits made it 15-50 times slower (the model's own threads are untouched)
        with threadpool_limits(limits=1, user_api="blas"):
            solution = minimize(
                objective,
                origin.cpu().numpy().ravel(),
                jac=True,
                method="L-BFGS-B",
                bounds=Bounds(np.full(origin.numel(), low), np.full(origin.numel(), high)),
                options={"maxiter": self.max_iterations, "ftol": 0.0, "gtol": 1e-7},
            )
        point = torch.from_numpy(solution.x).to(origin.device).view_as(origin)
        with torch.no_grad():
            logits = model(point.to(dtype).view(shape))
        distance = (point - origin).pow(2).sum(1).sqrt()
        self._record(logits, y, target, point, distance, best, best_norm)
        return is_adversarial(logits, y, target)

    @staticmethod
    def _record(
        logits: Tensor,
        y: Tensor,
        target: Tensor | None,
        point: Tensor,
        distance: Tensor,
        best: Tensor,
        best_norm: Tensor,
    ) -> None:
        """Keep, per row, the smallest adversarial point seen."""
        better = is_adversarial(logits.detach(), y, target) & (distance < best_norm)
        best_norm[better] = distance[better]
        best[better] = point[better].to(best.dtype)
