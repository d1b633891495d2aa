r"""Jacobian-based dataset augmentation of a substitute (clone) model's training set.

Papernot, McDaniel, Goodfellow, Jha, Celik and Swami (2017), "Practical black-box attacks
against machine learning", section 4.1: an attacker with few natural inputs grows its
query set where the substitute's decision surface changes fastest. Each point moves by
a step of length :math:`\lambda` along the sign of the substitute's Jacobian row for the
class the victim gave it,

.. math::
    S_{\rho+1} = S_\rho \cup \{x + \lambda_\rho \operatorname{sign}(J_F(x)[O(x)]) :
    x \in S_\rho\},\qquad \lambda_\rho = \lambda (-1)^{\lfloor \rho / \tau \rfloor},

the sign of the step flipping every :math:`\tau` rounds (their periodic step size) so
the points do not drift ever further from the data.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_real,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.state import preserved_model_state

__all__ = ["jacobian_augmentation", "periodic_step"]


def jacobian_augmentation(
    clone: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    step: float = 0.1,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    r"""One new point per input: ``clip(x + step * sign(∂ F[label](x) / ∂x), bounds)``.

    ``F[label]`` is the clone's logit of the class the victim gave ``x``; a positive
    ``step`` moves towards inputs the clone scores higher for that class, a negative one
    away from them. Coordinates where the gradient is exactly zero do not move. The
    clone is run in eval mode and left as it was found (mode flags, ``requires_grad``,
    buffers); its parameters get no gradients.

    Args:
        clone: the substitute model, inputs (N, ...) -> logits (N, C).
        x: inputs (N, ...), floating, inside ``bounds``.
        labels: the victim's class of each input (N,), integer in 0..C-1.
        step: the signed step length :math:`\lambda` (non-zero).
        bounds: ``(low, high)`` bounds of valid inputs; new points are clipped to them.

    Returns:
        The new points (N, ...), same dtype as ``x``; before clipping each is exactly
        ``|step|`` from its input in Linf (unless its gradient vanishes).

    Example:
        >>> import torch
        >>> clone = torch.nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = clone.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        >>> jacobian_augmentation(clone, torch.full((1, 2), 0.5), torch.tensor([0]), step=0.1)
        tensor([[0.6000, 0.4000]])

    """
    if not isinstance(clone, nn.Module):
        raise InvalidTypeError(f"clone must be a torch.nn.Module, got {type(clone).__name__}")
    step = check_real(step, "step")
    if step == 0:
        raise InvalidArgumentError("step must be non-zero, got 0.0")
    bounds = check_bounds(bounds)
    x = check_inputs(x, bounds=bounds)
    labels = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    with preserved_model_state(clone), torch.enable_grad():
        clone.eval()
        points = x.detach().clone().requires_grad_(True)
        logits = check_logits(clone(points), x.shape[0], name="clone")
        check_labels_in_range(labels, logits.shape[1], name="labels")
        chosen = logits.gather(1, labels[:, None]).sum()
        (gradient,) = torch.autograd.grad(chosen, points)
    return (x + step * gradient.sign()).clamp(*bounds).detach()


def periodic_step(step: float, round_index: int, tau: int) -> float:
    r"""Papernot et al.'s periodic step, :math:`\lambda (-1)^{\lfloor\rho/\tau\rfloor}`.

    Args:
        step: :math:`\lambda`, the step length of the first ``tau`` rounds.
        round_index: :math:`\rho \ge 0`, the substitute-training round.
        tau: :math:`\tau \ge 1`, rounds between sign flips.

    Example:
        >>> [periodic_step(0.1, rho, 2) for rho in range(5)]
        [0.1, 0.1, -0.1, -0.1, 0.1]

    """
    round_index = check_int(round_index, "round_index", minimum=0)
    tau = check_int(tau, "tau")
    return step if (round_index // tau) % 2 == 0 else -step
