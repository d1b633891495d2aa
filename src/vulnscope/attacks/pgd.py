"""Projected gradient descent."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_choice, check_fraction, check_int, check_real
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.iterative import (
    Budget,
    GradientAscentAttack,
    StartFn,
    best_of_restarts,
    random_start,
)
from vulnscope.attacks.losses import LOSSES, is_adversarial
from vulnscope.errors import InvalidArgumentError

__all__ = ["PGD"]


class PGD(GradientAscentAttack):
    r"""Projected gradient descent in the Linf, L2 or L1 ball, with restarts.

    Madry, Makelov, Schmidt, Tsipras and Vladu (2018), "Towards deep learning models
    resistant to adversarial attacks": from a uniformly random point of the eps-ball,
    ``steps`` steps of length ``step_size`` along the norm's steepest-ascent direction of
    the loss, each followed by the projection onto ball ∩ bounds. L1 steps move the few
    largest gradient coordinates that are not pinned at a bound (Tramèr and Boneh 2019)
    and project exactly onto the L1 ball ∩ box.

    Classic semantics by default: the result is the last iterate. ``early_stop=True``
    instead stops on a sample at its first misclassified iterate and keeps it, which
    finds at least as many adversarial examples for less work (what
    :func:`vulnscope.evaluate.robust_accuracy` uses). With ``restarts > 1``, each
    restart attacks only the samples no earlier restart broke, and each sample keeps its
    best result: an adversarial one if any, else the one with the highest loss.

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: perturbation budget in that norm, >= 0.
        steps: gradient steps per restart (default 40).
        step_size: step length; ``None`` for ``2.5 * eps / steps`` (Madry et al.).
        random_start: start from a uniform point of the ball instead of ``x``.
        restarts: number of runs from independent random starts.
        loss: ``"ce"`` (default), ``"margin"`` or ``"dlr"``.
        early_stop: stop on a sample at its first adversarial iterate and keep it.
        targeted: step towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.
        seed: seed of the random starts.
        l1_sparsity: fraction of coordinates an L1 step moves.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import PGD
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
        >>> res = PGD(norm="l2", eps=0.5, steps=10, seed=0)(model, x, y)
        >>> bool((res.norms <= 0.5 + 1e-6).all())
        True

    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float | None = None,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool = False,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
        l1_sparsity: float = 0.05,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=seed)
        self.steps = check_int(steps, "steps")
        self.step_size = (
            None
            if step_size is None
            else check_real(step_size, "step_size", minimum=0.0, exclusive=True)
        )
        self.random_start = check_bool(random_start, "random_start")
        self.restarts = check_int(restarts, "restarts")
        if self.restarts > 1 and not self.random_start:
            raise InvalidArgumentError(
                f"restarts={self.restarts} needs random_start=True: "
                "without a random start every restart repeats the first"
            )
        self.loss = check_choice(loss, "loss", tuple(LOSSES))
        self.early_stop = check_bool(early_stop, "early_stop")
        self.l1_sparsity = check_fraction(l1_sparsity, "l1_sparsity")

    def budget_at(self, eps: float) -> Budget:
        """``steps`` steps of ``step_size`` (default ``2.5 eps / steps``)."""
        step_size = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
        return Budget(eps, self.steps, step_size)

    def start_fn(self, generator: torch.Generator) -> StartFn | None:
        """A uniform point of the ball with ``random_start``, else the clean input."""
        return random_start(self.norm, self.bounds, generator) if self.random_start else None

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Restarts of projected gradient ascent; each sample keeps its best run."""
        if self.restarts == 1:
            return super().run(model, x, y, target=target, generator=generator)
        budgets = [self.budget_at(self.budget())]
        loss = LOSSES[self.loss]

        def run_once(todo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            ts = None if target is None else target[todo]
            x_adv = self.climb(model, x[todo], y[todo], ts, budgets, generator).x_adv
            with torch.no_grad():
                logits = model(x_adv)
            return x_adv, is_adversarial(logits, y[todo], ts), loss(logits, y[todo], ts)

        return best_of_restarts(x, self.restarts, run_once)

    def run_curve(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        epsilons: list[float],
        generator: torch.Generator,
    ) -> Tensor | None:
        """The ladder of :class:`GradientAscentAttack`, for a single restart only."""
        if self.restarts > 1:
            return None
        return super().run_curve(model, x, y, epsilons=epsilons, generator=generator)
