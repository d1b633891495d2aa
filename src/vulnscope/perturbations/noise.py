r"""Robustness to random and semi-random noise, next to the adversarial robustness.

Fawzi, Moosavi-Dezfooli and Frossard (2016), "Robustness of classifiers: from adversarial
to random noise" (NIPS). For a classifier whose decision boundary is locally flat enough,
the smallest perturbation along a random direction that changes the class is about
:math:`\sqrt d` times the smallest adversarial one, and the smallest inside a random
:math:`m`-dimensional subspace (semi-random noise) about :math:`\sqrt{d/m}` times:

.. math:: \|r_{\mathcal S}^*(x)\|_2 \approx \sqrt{d/m}\, \|r^*(x)\|_2.

:func:`noise_robustness` measures both per point, with the ratios to the point's minimal
adversarial L2 norm and the prediction beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bool,
    check_bounds,
    check_choice,
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_real,
    check_seed,
    check_tensor,
    describe,
)
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.deepfool import deepfool_points
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.refine import bisect_to_boundary
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.state import preserved_model_state

__all__ = ["KINDS", "NoiseRobustness", "noise_robustness"]

KINDS: tuple[str, ...] = ("random", "semi-random")
"""The noise regimes: a random direction, or a random subspace searched by DeepFool."""

_REACH = 4.0
"""Default search radius per point, in predicted ratios times its adversarial norm."""


@dataclass(frozen=True)
class NoiseRobustness:
    """Noise-to-adversarial robustness per point.

    Attributes:
        kind: ``"random"`` or ``"semi-random"``.
        dimension: ``d``, the number of input features.
        subspace_dim: ``m`` for semi-random noise, ``None`` for random noise.
        quantile: the quantile over directions that ``noise_norms`` reports (random).
        correct: (N,) bool, the model classifies the clean point as its label; the other
            points have norms 0 and ratio NaN.
        noise_norms: (N,) the random-noise norm (the ``quantile`` over directions) or the
            semi-random one; ``inf`` where none was found within the search.
        adversarial_norms: (N,) the minimal adversarial L2 norm.
        ratios: (N,) ``noise_norms / adversarial_norms``.
        predicted: Fawzi et al.'s prediction of the ratio: ``sqrt(d)`` or ``sqrt(d/m)``.
        direction_norms: (N, r) the norm along each random direction (random noise),
            ``None`` for semi-random noise.

    """

    kind: str
    dimension: int
    subspace_dim: int | None
    quantile: float
    correct: Tensor
    noise_norms: Tensor
    adversarial_norms: Tensor
    ratios: Tensor
    predicted: float
    direction_norms: Tensor | None

    @property
    def median_ratio(self) -> float:
        """Median of the finite ratios (NaN when none is finite)."""
        finite = self.ratios[torch.isfinite(self.ratios)]
        return float(finite.median()) if finite.numel() else math.nan


def noise_robustness(
    model: Any,
    inputs: Any,
    labels: Any,
    *,
    kind: str = "random",
    subspace_dim: int | None = None,
    directions: int = 20,
    quantile: float = 0.5,
    adversarial_norms: Tensor | None = None,
    max_norm: float | None = None,
    clip: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    scan_steps: int = 16,
    bisection_steps: int = 20,
    deepfool_steps: int = 50,
    seed: int | None = None,
) -> NoiseRobustness:
    r"""Smallest random and semi-random noise that changes the class, against adversarial.

    Fawzi, Moosavi-Dezfooli and Frossard (2016), "Robustness of classifiers: from
    adversarial to random noise" (NIPS).

    *Random* noise: for each point, ``directions`` unit directions ``u`` (normalised
    Gaussians), and along each the smallest ``|t|`` with the class changed at
    :math:`x + t u` (either sign). All (point, direction) pairs are searched in one batch:
    a scan over ``scan_steps`` magnitudes up to the search radius, then
    ``bisection_steps`` bisections inside the first bracket that changes the class (a
    change and change back within one scan cell is missed). The point's noise norm is
    the ``quantile`` over its directions (``inf`` where more than that share of the
    directions found nothing within the radius).

    *Semi-random* noise: for each point a random ``m``-dimensional subspace (orthonormal
    basis from the QR decomposition of a Gaussian (d, m) matrix) and the minimal
    perturbation inside it, by DeepFool restricted to the subspace (every gradient
    projected with :math:`P = S S^\top`,
    :func:`vulnscope.attacks.deepfool.deepfool_points`), shrunk towards the point by
    bisection like :class:`~vulnscope.attacks.DeepFool`'s refinement.

    The adversarial norm is the given ``adversarial_norms``, or L2 DeepFool's
    (overshoot 0.02, the same refinement): the estimator Fawzi et al. use, and the same
    search as the semi-random one without the subspace, so the two ratios compare like
    with like (with ``m = d`` the ratio is 1).

    Fawzi et al.'s analysis has no input box, and neither does this measure by default:
    with ``clip=False`` noisy points and DeepFool's iterates may leave ``bounds``; with
    ``clip=True`` every point is clipped to ``bounds`` (random noise then moves along the
    clipped path, and the adversarial norm is the box-constrained one).

    Args:
        model: maps inputs (N, ...) to logits (N, C).
        inputs: (N, ...) floating, inside ``bounds``.
        labels: (N,) int64 true labels; "the class changed" means the model no longer
            predicts the label.
        kind: ``"random"`` or ``"semi-random"``.
        subspace_dim: ``m`` in ``1..d``, required for ``"semi-random"`` and not taken by
            ``"random"``.
        directions: ``r >= 1`` random directions per point (random noise).
        quantile: the quantile over directions reported, in [0, 1] (random noise).
        adversarial_norms: (N,) minimal adversarial L2 norms, if already known.
        max_norm: search radius of random noise; ``None``: per point
            ``4 sqrt(d)`` times its adversarial norm (four times the prediction).
        clip: clip every perturbed point to ``bounds``.
        bounds: ``(low, high)`` of valid inputs.
        scan_steps: magnitudes scanned before bisection (random noise).
        bisection_steps: bisections of every bracket (random noise and the refinement of
            DeepFool's points).
        deepfool_steps: most DeepFool steps (adversarial and semi-random norms).
        seed: seed of the directions and subspaces; the same seed gives the same result.

    Returns:
        :class:`NoiseRobustness`.

    Shape:
        inputs: (N, ...) with ``d`` features; labels: (N,); the result's per-point
        tensors: (N,), ``direction_norms``: (N, r).

    """
    kind = check_choice(kind, "kind", KINDS)
    directions = check_int(directions, "directions")
    quantile = check_real(quantile, "quantile", minimum=0.0)
    if quantile > 1.0:
        raise InvalidArgumentError(f"quantile must be in [0, 1], got {quantile}")
    clip = check_bool(clip, "clip")
    bounds = check_bounds(bounds)
    scan_steps = check_int(scan_steps, "scan_steps")
    bisection_steps = check_int(bisection_steps, "bisection_steps", minimum=0)
    deepfool_steps = check_int(deepfool_steps, "deepfool_steps")
    seed = check_seed(seed)
    model = check_model(model)
    x = check_inputs(inputs, bounds=bounds, name="inputs").detach()
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    check_model_matches_inputs(model, x)
    d = math.prod(x.shape[1:])
    m = _check_subspace_dim(subspace_dim, kind, d)
    radius = None if max_norm is None else check_real(max_norm, "max_norm", minimum=0.0)
    if radius == 0.0:
        raise InvalidArgumentError("max_norm must be > 0, got 0.0")
    given = None if adversarial_norms is None else _check_norms(adversarial_norms, x)
    box = bounds if clip else (-math.inf, math.inf)
    generator = make_generator(seed)
    predicted = math.sqrt(d / (m if m is not None else 1))

    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        counted = CountingModel(model)
        with torch.no_grad():
            logits = check_logits(model(x), x.shape[0])
        check_labels_in_range(y, logits.shape[1], name="labels")
        correct = logits.argmax(1) == y
        search = _Search(counted, box, bisection_steps, deepfool_steps)
        adversarial = given if given is not None else search.deepfool(x, y, None)
        adversarial = torch.where(correct, adversarial, torch.zeros_like(adversarial))
        per_direction = None
        if m is None:
            gauss = torch.randn((x.shape[0], directions, d), generator=generator, dtype=x.dtype)
            units = (gauss / gauss.norm(dim=2, keepdim=True)).to(x.device)
            reach = (
                torch.full_like(adversarial, radius)
                if radius is not None
                else _REACH * predicted * adversarial
            )
            per_direction = search.along(x, y, units, reach, scan_steps)
            per_direction[~correct] = 0.0
            noise = _quantile(per_direction, quantile)
        else:
            gauss = torch.randn((x.shape[0], d, m), generator=generator, dtype=x.dtype)
            bases = torch.linalg.qr(gauss).Q.to(x.device)
            noise = search.deepfool(x, y, bases)
            noise = torch.where(correct, noise, torch.zeros_like(noise))
    ratios = torch.where(correct, noise / adversarial, torch.full_like(noise, math.nan))
    return NoiseRobustness(
        kind=kind,
        dimension=d,
        subspace_dim=m,
        quantile=quantile,
        correct=correct,
        noise_norms=noise,
        adversarial_norms=adversarial,
        ratios=ratios,
        predicted=predicted,
        direction_norms=per_direction,
    )


class _Search:
    """The two searches on one counted model and box."""

    def __init__(
        self, model: CountingModel, box: tuple[float, float], bisections: int, steps: int
    ) -> None:
        self.model, self.box, self.bisections, self.steps = model, box, bisections, steps

    def _changed(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return is_adversarial(self.model(x.clamp(*self.box)), y, None)

    def deepfool(self, x: Tensor, y: Tensor, bases: Tensor | None) -> Tensor:
        """(N,) L2 norm of DeepFool's refined point (in ``bases``' subspaces if given)."""
        points, found = deepfool_points(
            self.model,
            x,
            y,
            None,
            norm="l2",
            steps=self.steps,
            overshoot=0.02,
            candidates=None,
            bounds=self.box,
            basis=bases,
        )
        rows = found.nonzero()[:, 0]
        if rows.numel() and self.bisections:
            points[rows] = bisect_to_boundary(
                self.model,
                x[rows],
                points[rows],
                y[rows],
                None,
                steps=self.bisections,
                bounds=self.box,
            )
        norms = (points - x).flatten(1).norm(dim=1)
        return torch.where(found, norms, torch.full_like(norms, math.inf))

    def along(self, x: Tensor, y: Tensor, units: Tensor, reach: Tensor, scans: int) -> Tensor:
        """(N, r) smallest ``|t|`` changing the class at ``x ± t u``; ``inf`` past ``reach``."""
        n, r, _ = units.shape
        starts = x.flatten(1)[:, None, :].expand(n, r, -1).reshape(n * r, -1)
        units = units.reshape(n * r, -1)
        labels = y[:, None].expand(n, r).reshape(-1)
        limit = reach[:, None].expand(n, r).reshape(-1)

        def changed(rows: Tensor, t: Tensor) -> Tensor:
            step = t[:, None] * units[rows]
            both = torch.cat([starts[rows] + step, starts[rows] - step])
            hit = self._changed(both.view(-1, *x.shape[1:]), labels[rows].repeat(2))
            return hit[: rows.numel()] | hit[rows.numel() :]

        low = torch.zeros_like(limit)
        high = torch.full_like(limit, math.inf)
        open_rows = torch.isfinite(limit).nonzero()[:, 0]
        for k in range(1, scans + 1):
            if open_rows.numel() == 0:
                break
            t = limit[open_rows] * (k / scans)
            hit = changed(open_rows, t)
            high[open_rows[hit]] = t[hit]
            low[open_rows[~hit]] = t[~hit]
            open_rows = open_rows[~hit]
        rows = torch.isfinite(high).nonzero()[:, 0]
        for _ in range(self.bisections if rows.numel() else 0):
            middle = (low[rows] + high[rows]) / 2
            hit = changed(rows, middle)
            high[rows] = torch.where(hit, middle, high[rows])
            low[rows] = torch.where(hit, low[rows], middle)
        return high.view(n, r)


def _check_subspace_dim(value: Any, kind: str, d: int) -> int | None:
    """``m`` in ``1..d`` for semi-random noise; ``None`` for random noise."""
    if kind == "random":
        if value is not None:
            raise InvalidArgumentError(
                f"subspace_dim is only taken by kind='semi-random', got {value!r} with "
                "kind='random'"
            )
        return None
    if value is None:
        raise InvalidArgumentError(
            f"subspace_dim is required for kind='semi-random': an integer in 1..{d}"
        )
    m = check_int(value, "subspace_dim")
    if m > d:
        raise InvalidArgumentError(f"subspace_dim must be in 1..{d} (the input dimension), got {m}")
    return m


def _check_norms(value: Any, x: Tensor) -> Tensor:
    """Given adversarial norms: (N,) floating, finite or inf, >= 0."""
    norms = check_tensor(value, "adversarial_norms")
    if norms.shape != (x.shape[0],) or not norms.is_floating_point():
        raise InvalidArgumentError(
            f"adversarial_norms must be a floating tensor of shape ({x.shape[0]},), got "
            f"{describe(norms)}"
        )
    if bool(torch.isnan(norms).any()) or bool((norms < 0).any()):
        raise InvalidArgumentError("adversarial_norms must be >= 0 and not NaN")
    return norms.detach().to(device=x.device, dtype=x.dtype)


def _quantile(values: Tensor, q: float) -> Tensor:
    """The ``q`` quantile of each row (linear interpolation), ``inf`` entries allowed."""
    ordered = values.sort(dim=1).values
    position = q * (values.shape[1] - 1)
    low, frac = math.floor(position), position - math.floor(position)
    below = ordered[:, low]
    if frac == 0.0:
        return below
    above = ordered[:, low + 1]
    return torch.where(torch.isinf(above), above, below + (above - below) * frac)
