r"""CURE: train for robustness by penalising the curvature of the loss in input space.

Moosavi-Dezfooli, Fawzi, Uesato and Frossard (2019), "Robustness via curvature
regularization, and vice versa" (the Fawzi talk, slides 15-17): adversarial training
works largely by flattening the loss surface around the data, so regularise the
curvature directly. With ``H`` the input Hessian of the loss (see
:mod:`vulnscope.diagnostics.hessian`) and a direction ``z``,

.. math:: \|\nabla_x \ell(x + h z) - \nabla_x \ell(x)\|_2^2 \approx h^2 \|H z\|_2^2,

a finite difference that costs one extra gradient and needs no third derivative of the
network. The paper takes ``z = sign(∇ℓ) / ||sign(∇ℓ)||``, the direction in which the
curvature matters to an L∞ attacker; the talk's Hutchinson form takes Gaussian
``z ~ N(0, I)``, for which ``E ||H z||² = ||H||_F²``. The objective is

.. math:: \ell(f(x), y) + \gamma \, \|\nabla_x \ell(x + h z) - \nabla_x \ell(x)\|_2^2,

averaged over the minibatch; ``z`` is held fixed (detached), both gradients are built
with ``create_graph=True`` so that the penalty is differentiated through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_choice, check_real
from vulnscope.errors import InvalidArgumentError

__all__ = ["CURE", "curvature_penalty"]

DIRECTIONS = ("gradient_sign", "gaussian")


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample losses (B,) and their input gradients (B, ...), graph kept."""
    x = x.detach().requires_grad_(True)
    losses = F.cross_entropy(model(x), y, reduction="none")
    (gradient,) = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return losses, gradient


def curvature_penalty(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    h: float,
    direction: str = "gradient_sign",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The cross-entropy and CURE's finite-difference curvature penalty, per sample.

    Args:
        model: (B, ...) -> (B, C) logits.
        x: (B, ...) inputs.
        y: (B,) int64 labels.
        h: finite-difference step, > 0.
        direction: ``"gradient_sign"`` (the paper) or ``"gaussian"`` (Hutchinson).
        generator: source of the Gaussian directions (required for ``"gaussian"``).

    Returns:
        ``(losses, penalties)``, each (B,), differentiable with respect to the model's
        parameters: ``||∇ℓ(x + h z) - ∇ℓ(x)||²``.

    """
    h = check_real(h, "h", minimum=0.0, exclusive=True)
    direction = check_choice(direction, "direction", DIRECTIONS)
    if y.is_floating_point():
        raise InvalidArgumentError("CURE needs integer class labels y, got probability targets")
    with torch.enable_grad():
        losses, gradient = _input_gradient(model, x, y)
        if direction == "gradient_sign":
            z = gradient.detach().sign()
            norms = z.flatten(1).norm(dim=1).clamp_min(1e-12)
            z = z / norms.view(-1, *([1] * (z.ndim - 1)))
        else:
            if generator is None:
                raise InvalidArgumentError("direction='gaussian' needs a generator")
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        _, shifted = _input_gradient(model, x + h * z, y)
        penalties = (shifted - gradient).flatten(1).pow(2).sum(dim=1)
    return losses, penalties


class CURE:
    r"""The CURE objective for :func:`vulnscope.models.train_classifier`.

    ``mean(ℓ) + gamma * mean(||∇ℓ(x + h z) - ∇ℓ(x)||²)``; see the module docstring.

    Args:
        h: finite-difference step in the L2 norm of the input, > 0 (the paper's 1.5 on a
            0-255 CIFAR scale; inputs in [0, 1] with 64 pixels want a few tenths).
        gamma: weight of the penalty, >= 0 (0 is plain training).
        direction: ``"gradient_sign"`` (default, the paper) or ``"gaussian"``.

    Shape:
        x: (B, ...); y: (B,) int64 labels; returns a scalar loss.

    """

    def __init__(self, *, h: float = 0.5, gamma: float = 4.0, direction: str = "gradient_sign"):
        self.h = check_real(h, "h", minimum=0.0, exclusive=True)
        self.gamma = check_real(gamma, "gamma", minimum=0.0)
        self.direction = check_choice(direction, "direction", DIRECTIONS)

    def __repr__(self) -> str:
        return f"CURE(h={self.h!r}, gamma={self.gamma!r}, direction={self.direction!r})"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The CURE loss of a minibatch (scalar)."""
        if self.gamma == 0.0:
            return F.cross_entropy(model(x), y)
        losses, penalties = curvature_penalty(
            model, x, y, h=self.h, direction=self.direction, generator=generator
        )
        return losses.mean() + self.gamma * penalties.mean()
