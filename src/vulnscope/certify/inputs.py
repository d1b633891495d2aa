"""The set of inputs a certificate covers: a norm ball around each point, inside the box."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope.certify.bounds import linear_range

__all__ = ["InputSet", "input_set"]


@dataclass(frozen=True)
class InputSet:
    """``{x' : ||x' - x|| <= eps, low <= x' <= high}`` for each point of a batch.

    Attributes:
        center: the points x, (B, *in).
        eps: the radii, (B,).
        norm: ``"linf"`` or ``"l2"``.
        lower, upper: a box holding the set, (B, *in): exactly the set for L∞
            (the ball and the input box intersect in a box), the ball's bounding box
            clipped to the input box for L2.

    """

    center: Tensor
    eps: Tensor
    norm: str
    lower: Tensor
    upper: Tensor

    def minimum(self, coefficients: Tensor) -> Tensor:
        """A sound lower bound of ``min A . x'`` over the set, (B, S) for A (B, S, *in).

        Exact for L∞. For L2 the larger of the ball's bound, ``A . x - eps ||A||_2``, and the
        box's (both hold on the intersection).
        """
        return self.range(coefficients)[0]

    def range(self, coefficients: Tensor) -> tuple[Tensor, Tensor]:
        """Sound bounds of ``min`` and ``max A . x'`` over the set: two (B, S) tensors."""
        low, high = linear_range(coefficients, self.lower, self.upper)
        if self.norm == "linf":
            return low, high
        flat = coefficients.flatten(2)
        centre = torch.bmm(flat, self.center.flatten(1).unsqueeze(-1)).squeeze(-1)
        reach = self.eps.unsqueeze(1) * flat.norm(dim=2)
        return torch.maximum(centre - reach, low), torch.minimum(centre + reach, high)


def input_set(
    x: Tensor, *, norm: str, eps: Tensor | float, bounds: tuple[float, float]
) -> InputSet:
    """The :class:`InputSet` of the points ``x`` (B, *in), radius ``eps`` (scalar or (B,))."""
    radius = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
    spread = radius.view(-1, *([1] * (x.dim() - 1)))
    lower = (x - spread).clamp(min=bounds[0])
    upper = (x + spread).clamp(max=bounds[1])
    return InputSet(center=x, eps=radius, norm=norm, lower=lower, upper=upper)
