"""Decision-boundary cross-sections: the classifier on a plane through an input.

The plane through ``x`` spanned by an adversarial direction and a random direction
orthogonal to it shows how close and how curved the decision boundaries are (Fawzi, Moosavi-
Dezfooli and Frossard 2017, "The robustness of deep networks: a geometrical perspective";
the Fawzi talk, slide 12; Moosavi-Dezfooli et al. 2019 compare the sections before and after
adversarial training). Points are not clipped to the input bounds, so that both axes keep
their Euclidean scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_real, check_seed
from vulnscope.diagnostics._session import diagnostic_session
from vulnscope.errors import InvalidArgumentError

__all__ = ["BoundarySection", "decision_boundary_section"]


@dataclass(frozen=True)
class BoundarySection:
    """The classifier on an R x R grid around each input.

    Entry ``[n, i, j]`` is at ``x_n + offsets[j] * directions[n, 0] + offsets[i] *
    directions[n, 1]``: columns move along the adversarial direction, rows along the random
    one, so ``imshow(classes[n], origin="lower")`` puts the adversarial axis horizontally.

    Attributes:
        offsets: (R,) float64 L2 distances along each axis, from ``-radius`` to ``radius``.
        classes: (N, R, R) int64 predicted class.
        margins: (N, R, R) float64 logit of the reference class minus the largest other
            logit: positive where the reference class wins; its zero level is the boundary.
        reference: (N,) the class predicted at ``x``.
        directions: (N, 2, *x.shape[1:]) the orthonormal adversarial and random directions.

    """

    offsets: Tensor
    classes: Tensor
    margins: Tensor
    reference: Tensor
    directions: Tensor


def decision_boundary_section(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    direction: Tensor,
    *,
    radius: float = 2.0,
    resolution: int = 41,
    seed: int | None = 0,
    batch_points: int = 2048,
) -> BoundarySection:
    """Predicted class and logit margin on the plane of ``direction`` and a random direction.

    Args:
        model: (N, ...) -> (N, C) logits, samples independent.
        x: (N, ...) inputs at the centres of the sections.
        direction: (N, ...) adversarial directions (e.g. the input Fisher's top eigenvector
            or the loss gradient); normalised here.
        radius: half-width of the square in L2 units.
        resolution: R, grid points per axis (odd puts ``x`` itself on the grid).
        seed: seed of the random directions.
        batch_points: points per model call.

    Returns:
        :class:`BoundarySection`.

    """
    radius = check_real(radius, "radius", minimum=0.0, exclusive=True)
    resolution = check_int(resolution, "resolution", minimum=2)
    batch_points = check_int(batch_points, "batch_points")
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x) as session:
        x = session.x
        if direction.shape != x.shape:
            raise InvalidArgumentError(
                f"direction must have the shape of x, {tuple(x.shape)}, "
                f"got {tuple(direction.shape)}"
            )
        flat = x.flatten(1)
        first = direction.detach().flatten(1).to(x.dtype)
        norms = first.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise InvalidArgumentError("direction must be non-zero for every sample")
        first = first / norms
        second = torch.randn(flat.shape, generator=generator, dtype=x.dtype).to(x.device)
        second = second - (second * first).sum(1, keepdim=True) * first
        second = second / second.norm(dim=1, keepdim=True)
        offsets = torch.linspace(-radius, radius, resolution, dtype=torch.float64)
        grid = offsets.to(x.dtype).to(x.device)
        points = (
            flat[:, None, None, :]
            + grid[None, None, :, None] * first[:, None, None, :]
            + grid[None, :, None, None] * second[:, None, None, :]
        ).reshape(-1, *x.shape[1:])
        with torch.no_grad():
            reference = session.model(x).argmax(1)
            logits = torch.cat([session.model(chunk) for chunk in points.split(batch_points)])
    logits = logits.double().reshape(x.shape[0], resolution, resolution, -1)
    index = reference[:, None, None, None].expand(-1, resolution, resolution, 1)
    others = logits.scatter(3, index, float("-inf"))
    margins = logits.gather(3, index)[..., 0] - others.amax(3)
    return BoundarySection(
        offsets=offsets,
        classes=logits.argmax(3),
        margins=margins,
        reference=reference,
        directions=torch.stack([first, second], 1).reshape(x.shape[0], 2, *x.shape[1:]),
    )
