r"""Bounds on the smallest class-changing perturbation from a quadratic model of the loss.

Moosavi-Dezfooli, Fawzi, Uesato and Frossard (2019), "Robustness via curvature
regularization, and vice versa", Theorem 1. Around ``x`` let the cross-entropy be
``ℓ(x + r) ≈ ℓ + gᵀr + ½ rᵀ H r`` with ``ν = λ_max(H)`` and ``u`` its unit eigenvector. The
smallest ``r`` that lifts the loss by ``c > 0`` satisfies

.. math::
    \frac{2c}{\|g\| + \sqrt{\|g\|^2 + 2\nu c}} \;\le\; \|r^*\| \;\le\;
    \frac{2c}{|g^\top u| + \sqrt{(g^\top u)^2 + 2\nu c}},

the left because no step of norm s lifts the model's loss by more than ``s||g|| + ½ν s²``,
the right because the step along ``±u`` of that length does (the paper's form
``(a/ν)(√(1 + 2νc/a²) - 1)``, written without its cancellation). The gradient direction
gives a second upper bound, with ``ĝᵀHĝ`` for ``ν`` and ``||g||`` for ``a``; the smaller is kept.

To turn loss levels into class changes: a sample is misclassified only if ``p_y <= 1/2``,
i.e. ``ℓ >= log 2``, and surely misclassified once ``p_y < 1/C``, i.e. ``ℓ > log C``. So the
lower bound uses ``c = log 2 - ℓ`` and the upper bound ``c = log C - ℓ``: both bracket the
minimal class-changing perturbation of the quadratic model.

They bound the real minimal perturbation only as far as the quadratic model holds. For an
input the model is confident about, the cross-entropy is exponentially flat (``ℓ ≈ Σ e^{-m}``
for logit margins ``m``), its gradient and curvature at ``x`` are tiny, and the quadratic
model puts the boundary much farther away than it is: on the digits CNN both bounds exceed
the measured distance for most inputs. ``vulnscope diagnose`` reports the fraction of inputs
whose measured distance they bracket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_seed
from vulnscope.diagnostics._session import diagnostic_session
from vulnscope.diagnostics.hessian import loss_curvature
from vulnscope.diagnostics.lanczos import random_start_ritz_pairs
from vulnscope.errors import InvalidArgumentError

__all__ = ["CurvatureBounds", "curvature_bounds", "quadratic_step"]


def quadratic_step(slope: Tensor, curvature: Tensor, rise: Tensor) -> Tensor:
    """Smallest ``s >= 0`` with ``slope·s + ½ curvature·s² = rise`` (elementwise, float64).

    ``0`` where ``rise <= 0``; ``inf`` where the parabola never reaches ``rise`` (negative
    curvature, or zero slope and curvature).
    """
    slope, curvature, rise = slope.double(), curvature.double(), rise.double()
    discriminant = slope**2 + 2 * curvature * rise
    denominator = slope + discriminant.clamp_min(0).sqrt()
    step = torch.where(
        (discriminant >= 0) & (denominator > 0),
        2 * rise / denominator.clamp_min(1e-300),
        torch.full_like(rise, math.inf),
    )
    return torch.where(rise <= 0, torch.zeros_like(step), step)


@dataclass(frozen=True)
class CurvatureBounds:
    """Quadratic-model bounds on the minimal L2 class-changing perturbation, per sample.

    Attributes:
        lower: (N,) no perturbation smaller than this reaches ``ℓ = log 2`` in the model.
        upper: (N,) a perturbation this large reaches ``ℓ = log C`` in the model.
        loss: (N,) cross-entropy at ``x``.
        gradient_norm: (N,) ``||g||``.
        top_curvature: (N,) ``ν``, the largest eigenvalue of H (Lanczos).
        gradient_along_top: (N,) ``|gᵀu|``.
        gradient_curvature: (N,) ``ĝᵀ H ĝ``.

    """

    lower: Tensor
    upper: Tensor
    loss: Tensor
    gradient_norm: Tensor
    top_curvature: Tensor
    gradient_along_top: Tensor
    gradient_curvature: Tensor


def curvature_bounds(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    steps: int | None = None,
    seed: int | None = 0,
) -> CurvatureBounds:
    """Lower and upper bounds on ``||r*||`` from the loss's gradient and top curvature.

    Args:
        model: (N, ...) -> (N, C) logits, samples independent.
        x: (N, ...) inputs.
        y: (N,) true labels.
        steps: Lanczos steps for ``ν`` (default ``min(n, 40)``).
        seed: seed of the Lanczos start vectors.

    Returns:
        :class:`CurvatureBounds`. For a sample already misclassified both bounds may be 0.

    """
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x, y) as session:
        n, classes = session.x[0].numel(), session.classes
        m = min(n, 40) if steps is None else check_int(steps, "steps")
        if m > n:
            raise InvalidArgumentError(f"steps must be at most n = {n}, got {m}")
        curvature = loss_curvature(session.model, session.x, cast(Tensor, session.y))
        pairs = random_start_ritz_pairs(
            curvature.hvp, (x.shape[0], n), m, generator=generator, device=x.device
        )
        top, top_vector = pairs.values[:, -1], pairs.vectors[:, -1]
        gradient = curvature.gradient
        norm = gradient.norm(dim=1)
        unit = gradient / norm[:, None].clamp_min(1e-300)
        along_gradient = (unit * curvature.hvp(unit)).sum(1)
    along_top = (gradient * top_vector).sum(1).abs()
    loss = curvature.loss.double()
    lower = quadratic_step(norm, top.clamp_min(0), math.log(2) - loss)
    rise = math.log(classes) - loss
    upper = torch.minimum(
        quadratic_step(along_top, top, rise), quadratic_step(norm, along_gradient, rise)
    )
    return CurvatureBounds(lower, upper, loss, norm, top, along_top, along_gradient)
