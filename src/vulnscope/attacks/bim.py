"""Basic iterative method."""

from __future__ import annotations

import math

from vulnscope._validation import check_bool, check_choice, check_fraction, check_int, check_real
from vulnscope.attacks.iterative import Budget, GradientAscentAttack
from vulnscope.attacks.losses import LOSSES

__all__ = ["BIM"]


class BIM(GradientAscentAttack):
    r"""Basic iterative method: FGSM repeated with small steps, projected after each.

    Kurakin, Goodfellow and Bengio (2017), "Adversarial examples in the physical world":
    :math:`x_{k+1} = \Pi_{x,\epsilon}(x_k + \alpha\,\mathrm{sign}(\nabla L(x_k)))` from
    :math:`x_0 = x`. Their defaults: :math:`\alpha` one intensity level (1/255 of the
    input range) and :math:`\min(\epsilon/\alpha + 4,\ 1.25\,\epsilon/\alpha)` steps.
    Deterministic; PGD with a random start generalises it.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: perturbation budget in that norm, >= 0.
        steps: number of steps; ``None`` for Kurakin et al.'s rule.
        step_size: step length; ``None`` for one intensity level, ``(high - low) / 255``.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
        early_stop: stop on a sample at its first adversarial iterate and keep it.
        targeted: step towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        l1_sparsity: fraction of coordinates an L1 step moves.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        loss: str = "ce",
        early_stop: bool = False,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        l1_sparsity: float = 0.05,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.steps = None if steps is None else check_int(steps, "steps")
        self.step_size = (
            None
            if step_size is None
            else check_real(step_size, "step_size", minimum=0.0, exclusive=True)
        )
        self.loss = check_choice(loss, "loss", tuple(LOSSES))
        self.early_stop = check_bool(early_stop, "early_stop")
        self.l1_sparsity = check_fraction(l1_sparsity, "l1_sparsity")

    def budget_at(self, eps: float) -> Budget:
        """Steps and step size at budget ``eps``, with Kurakin et al.'s defaults filled in."""
        step_size = self.step_size or (self.bounds[1] - self.bounds[0]) / 255.0
        levels = eps / step_size
        steps = self.steps or max(1, math.ceil(min(levels + 4.0, 1.25 * levels)))
        return Budget(eps, steps, step_size)
