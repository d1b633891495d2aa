"""Fast gradient sign method."""

from __future__ import annotations

from vulnscope._validation import check_choice, check_fraction
from vulnscope.attacks.iterative import Budget, GradientAscentAttack
from vulnscope.attacks.losses import LOSSES

__all__ = ["FGSM"]


class FGSM(GradientAscentAttack):
    r"""Fast gradient sign method: one step of size ``eps`` up the loss gradient.

    Goodfellow, Shlens and Szegedy (2015), "Explaining and harnessing adversarial
    examples": :math:`x' = \mathrm{clip}(x + \epsilon\,\mathrm{sign}(\nabla_x L(x, y)))`.
    With ``norm="l2"`` or ``"l1"`` the sign becomes that norm's steepest-ascent direction
    (the fast gradient method). Deterministic.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: perturbation budget in that norm, >= 0.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
        targeted: step towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        l1_sparsity: fraction of coordinates an L1 step moves.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import FGSM
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
        >>> res = FGSM(eps=0.1)(model, x, y)
        >>> bool((res.x_adv - x).abs().max() <= 0.1 + 1e-7)
        True

    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        loss: str = "ce",
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        l1_sparsity: float = 0.05,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.loss = check_choice(loss, "loss", tuple(LOSSES))
        self.l1_sparsity = check_fraction(l1_sparsity, "l1_sparsity")
        self.early_stop = False  # one step: nothing to stop early

    def budget_at(self, eps: float) -> Budget:
        """One step the size of the ball."""
        return Budget(eps, 1, eps)
