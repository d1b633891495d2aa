r"""Adversarial training: minimise the loss at the worst point of each input's eps-ball.

Madry, Makelov, Schmidt, Tsipras and Vladu (2018), "Towards deep learning models resistant
to adversarial attacks", train on the saddle-point problem

.. math:: \min_\theta \; \mathbb{E}_{(x, y)} \max_{\|\delta\| \le \epsilon}
          \ell(f_\theta(x + \delta), y),

approximating the inner maximum by PGD from a random start. Wong, Rice and Kolter
(2020), "Fast is better than free: revisiting adversarial training", showed that a
single FGSM step of ``1.25 eps`` from a uniformly random start ("fast" adversarial
training) reaches most of PGD training's robustness at the cost of one extra gradient;
it is the same objective with one step. Goodfellow, Shlens and Szegedy (2015) mixed the
clean and the adversarial loss; ``clean_weight`` gives that mixture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_bounds, check_int, check_norm, check_real
from vulnscope.attacks.pgd import PGD
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.state import preserved_model_state

__all__ = ["AdversarialTraining", "fast_fgsm_training", "pgd_training"]


class AdversarialTraining:
    r"""The objective of adversarial training: cross-entropy at PGD examples.

    Each minibatch is attacked by :class:`vulnscope.attacks.PGD` (``steps`` steps of
    ``step_size`` from a uniform point of the eps-ball, classic last-iterate semantics)
    with the model in eval mode, and the loss is

    .. math:: (1 - w)\, \ell(f(x'), y) + w\, \ell(f(x), y),

    with ``w = clean_weight`` (0 for Madry et al.; 0.5 for Goodfellow et al.). Pass it to
    :func:`vulnscope.models.train_classifier` as ``objective``.

    Args:
        eps: radius of the threat model's ball, > 0.
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        steps: PGD steps per minibatch (Madry et al. use 40 on MNIST; 10 is the usual
            compromise, 1 is fast FGSM training).
        step_size: PGD step; ``None`` for ``2.5 eps / steps``.
        clean_weight: weight of the clean loss, in [0, 1].
        bounds: input bounds of the attack, default ``(0, 1)``.

    Shape:
        x: (B, ...) inside ``bounds``; y: (B,) int64 labels; returns a scalar loss.

    Example:
        >>> import torch
        >>> from vulnscope.defences import pgd_training
        >>> from vulnscope.models import train_classifier
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x, y = torch.rand(32, 1, 2, 2), torch.randint(0, 2, (32,))
        >>> _ = train_classifier(model, x, y, epochs=2, objective=pgd_training(0.1, steps=3))

    """

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        clean_weight: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
        self.norm = check_norm(norm)
        self.steps = check_int(steps, "steps")
        self.step_size = (
            None
            if step_size is None
            else check_real(step_size, "step_size", minimum=0.0, exclusive=True)
        )
        self.clean_weight = check_real(clean_weight, "clean_weight", minimum=0.0)
        if self.clean_weight > 1.0:
            raise InvalidArgumentError(f"clean_weight must be in [0, 1], got {self.clean_weight}")
        self.bounds = check_bounds(bounds)

    def __repr__(self) -> str:
        return (
            f"AdversarialTraining(eps={self.eps!r}, norm={self.norm!r}, steps={self.steps}, "
            f"step_size={self.step_size!r}, clean_weight={self.clean_weight!r})"
        )

    def attack(self, seed: int) -> PGD:
        """The PGD attack that crafts one minibatch's examples."""
        return PGD(
            norm=self.norm,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            random_start=True,
            bounds=self.bounds,
            seed=seed,
        )

    def adversarial_examples(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """PGD examples (B, ...) against ``model`` in eval mode, seeded from ``generator``."""
        if y.is_floating_point():
            raise InvalidArgumentError(
                "adversarial training needs integer class labels y, got probability targets"
            )
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        # the attack's lean path: the minibatch is the training loop's, already checked;
        # crafted in eval mode with the parameters frozen, every flag given back after
        with preserved_model_state(model):
            model.eval()
            return self.attack(seed).perturb(model, x, y)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The minibatch loss (scalar), with the model back in its own (training) mode."""
        x_adv = self.adversarial_examples(model, x, y, generator)
        loss = F.cross_entropy(model(x_adv), y)
        if self.clean_weight == 0.0:
            return loss
        return (1.0 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(model(x), y)


def pgd_training(eps: float, *, norm: str = "linf", steps: int = 10) -> AdversarialTraining:
    """Madry et al. (2018): ``steps`` PGD steps of ``2.5 eps / steps``, adversarial loss only."""
    return AdversarialTraining(eps=eps, norm=norm, steps=steps)


def fast_fgsm_training(eps: float, *, norm: str = "linf") -> AdversarialTraining:
    """Wong, Rice and Kolter (2020): one step of ``1.25 eps`` from a uniform random start."""
    eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
    return AdversarialTraining(eps=eps, norm=norm, steps=1, step_size=1.25 * eps)
