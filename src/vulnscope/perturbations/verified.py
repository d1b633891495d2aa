r"""Verified image manipulations: a whole family of them certified, or a counterexample.

Huang, Kwiatkowska, Wang and Wu ("Safety verification of deep neural networks", CAV 2017)
verify that no manipulation of a set (a scratch, a change of lighting) changes a
classification. Here a family is *affine in its parameters* θ, which range over a box:

.. math::

    x'(\theta) = \operatorname{clip}\big(x + A_x\,\theta\big),
    \qquad \theta \in [\theta_{lo}, \theta_{hi}]^k,

with ``A_x`` possibly depending on the point (a contrast change scales the image itself)
and the clip to the input bounds exact with two ReLUs:
``clip(v, lo, hi) = hi - relu(hi - lo - relu(v - lo))``. :func:`verify_manipulation`
prepends that map, with θ normalised to ``t ∈ [-1, 1]^k``, to the model as a linear layer
and certifies the composed network with :func:`vulnscope.certify.certify` on the L∞ ball of
radius 1 around ``t = 0`` inside the input box ``(-1, 1)``, which is exactly the parameter
box: a certified point is classified as its label under *every* manipulation of the
family. Where the certificate fails, an attack on θ looks for a counterexample (confirmed
by a plain forward pass); a point with neither is ``"unknown"``, never ``"verified"``.

A finite family (a grid of rotations, translations and scalings) is checked exhaustively by
:func:`verify_transformations`: verified or a counterexample, never unknown.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_choice,
    check_int,
    check_labels,
    check_logits,
    check_model,
    check_seed,
    describe,
)
from vulnscope.attacks.losses import margin
from vulnscope.certify.certificate import METHODS, certify
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.state import preserved_model_state
from vulnscope.perturbations.manipulations import Manipulation
from vulnscope.perturbations.spatial import worst_over_transformations
from vulnscope.perturbations.transforms import PARAMETERS, Fill, SpatialGrid

__all__ = ["STATUSES", "ManipulationVerification", "verify_manipulation", "verify_transformations"]

STATUSES = ("verified", "counterexample", "unknown")
"""The answers per point: certified for the whole set, broken by a given member, neither."""

_MAX_CELLS = 4096
"""The most cells :func:`verify_manipulation` certifies per point when it splits the box."""

_ALL_CORNERS_UP_TO = 8
"""Families with at most this many parameters have every corner of their box tried."""


@dataclass(frozen=True)
class ManipulationVerification:
    """Per point: the whole manipulation set verified, a counterexample, or unknown.

    Attributes:
        status: one of :data:`STATUSES` per point. ``"verified"``: every manipulation of
            the set is classified as the label (a certificate, or an exhaustive check of a
            finite set); ``"counterexample"``: a member of the set that is not (checked by
            a forward pass); ``"unknown"``: neither was found.
        counterexamples: (N, C, H, W) the manipulated input where the status is
            ``"counterexample"``, NaN elsewhere.
        parameters: (N, k) the manipulation's parameters for that input, NaN elsewhere.
        parameter_names: the names of the k parameters.
        manipulation: the family's name.
        method: the certification method, or ``"exhaustive"`` for a finite set.

    """

    status: tuple[str, ...]
    counterexamples: Tensor
    parameters: Tensor
    parameter_names: tuple[str, ...]
    manipulation: str
    method: str

    @property
    def verified(self) -> Tensor:
        """(N,) bool: the point is verified for every manipulation of the set."""
        return torch.tensor([s == "verified" for s in self.status], dtype=torch.bool)

    @property
    def falsified(self) -> Tensor:
        """(N,) bool: the point has a counterexample."""
        return torch.tensor([s == "counterexample" for s in self.status], dtype=torch.bool)

    @property
    def verified_fraction(self) -> float:
        """The share of points verified: a lower bound of the accuracy over the set."""
        return float(self.verified.float().mean())


class _Parameterised(nn.Module):
    """``model(clip(bias + weight t))``: one point's manipulation family as one network.

    The clip is written with ReLUs, ``hi - relu(hi - lo - relu(v - lo))``, exact and
    bounded by :mod:`vulnscope.certify` like any other ReLU.
    """

    def __init__(
        self,
        model: nn.Module,
        weight: Tensor,
        bias: Tensor,
        shape: Sequence[int],
        clip: tuple[float, float] | None,
    ) -> None:
        super().__init__()
        self.parameterisation = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
        with torch.no_grad():
            self.parameterisation.weight.copy_(weight)
            self.parameterisation.bias.copy_(bias)
        self.parameterisation.requires_grad_(False)
        self.model = model
        self.shape = tuple(shape)
        self.clip = clip

    def forward(self, t: Tensor) -> Tensor:
        """Logits (B, K) for normalised parameters t (B, k)."""
        v = self.parameterisation(t).reshape(-1, *self.shape)
        if self.clip is not None:
            low, high = self.clip
            v = high - torch.relu((high - low) - torch.relu(v - low))
        return self.model(v)  # type: ignore[no-any-return]


def _manipulated(manipulation: Manipulation, x: Tensor, theta: Tensor) -> Tensor:
    out = manipulation.manipulate(x, theta)
    return out if manipulation.clip is None else out.clamp(*manipulation.clip)


def _corners(k: int, count: int, generator: torch.Generator, like: Tensor) -> Tensor:
    """The box's corners in normalised units, (M, k): all of them for small k, else a sample."""
    if k <= _ALL_CORNERS_UP_TO:
        signs = list(itertools.product((-1.0, 1.0), repeat=k))
        return torch.tensor(signs, dtype=like.dtype, device=like.device)
    draws = torch.randint(0, 2, (count, k), generator=generator, device=like.device)
    return draws.to(like.dtype) * 2 - 1


def _search(
    model: Callable[[Tensor], Tensor],
    manipulation: Manipulation,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """The parameters θ (n, k) of each point's worst member found, and its logits (n, K).

    The centre and the corners of the box (all of them up to 2**8, else 64 drawn), then
    sign-gradient ascent on the margin ``max_{j != y} z_j - z_y`` over the normalised box
    from a random start, step size shrinking from 0.5 to 0 (as PGD, Madry et al. 2018).
    """
    n, k = x.shape[0], len(manipulation.parameter_names)
    mid = ((manipulation.lower + manipulation.upper) / 2).to(x)
    half = ((manipulation.upper - manipulation.lower) / 2).to(x)
    candidates = torch.cat([torch.zeros(1, k).to(x), _corners(k, 64, generator, x)])
    count = candidates.shape[0]
    theta = mid + half * candidates
    with torch.no_grad():
        logits = model(
            _manipulated(manipulation, x.repeat_interleave(count, 0), theta.repeat(n, 1))
        )
        scores = margin(logits, y.repeat_interleave(count), None).view(n, count)
    best_score, best = scores.max(dim=1)
    best_t = candidates[best]
    t = torch.rand(n, k, generator=generator, device=x.device).to(x) * 2 - 1
    for step in range(steps):
        t.requires_grad_(True)
        with torch.enable_grad():
            score = margin(model(_manipulated(manipulation, x, mid + half * t)), y, None)
            (gradient,) = torch.autograd.grad(score.sum(), t)
        with torch.no_grad():
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_t = torch.where(better.unsqueeze(1), t, best_t)
            size = 0.5 * (1 - step / steps)
            t = (t + size * gradient.sign()).clamp(-1, 1).detach()
    with torch.no_grad():
        score = margin(model(_manipulated(manipulation, x, mid + half * t)), y, None)
        best_t = torch.where((score > best_score).unsqueeze(1), t, best_t)
        found = mid + half * best_t
        return found, model(_manipulated(manipulation, x, found))


def _parameterisation(manipulation: Manipulation, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per point, ``x'`` before the clip as ``weight t + bias`` for t in [-1, 1]^k.

    Returns:
        weights (N, d, k) and biases (N, d), with ``d`` the number of input features.

    """
    lower, upper = manipulation.lower.to(x), manipulation.upper.to(x)
    mid, half = (lower + upper) / 2, (upper - lower) / 2
    offset, matrix = manipulation.affine(x)
    columns = matrix.flatten(1, -2)
    return columns * half, offset.flatten(1) + columns @ mid


def _cells(k: int, splits: int, like: Tensor) -> Tensor:
    """Centres (splits**k, k) of the equal cells that cut [-1, 1]^k ``splits`` times per axis."""
    centres = (torch.arange(splits, dtype=like.dtype, device=like.device) * 2 + 1) / splits - 1
    return torch.cartesian_prod(*[centres] * k).reshape(-1, k)


def _certified(
    model: nn.Module,
    weight: Tensor,
    bias: Tensor,
    label: Tensor,
    manipulation: Manipulation,
    x: Tensor,
    *,
    method: str,
    splits: int,
) -> bool:
    """Whether certify proves one point's family (weight (d, k), bias (d,)) keeps ``label``.

    The whole box first; if that fails and ``splits > 1``, every cell of the box cut
    ``splits`` times per axis, in one :func:`certify` call (the cells are the L∞ balls of
    radius ``1 / splits`` around their centres): the family is verified when every cell is.
    The clip is left out where the family provably stays inside its bounds (the interval
    ``bias ± |weight|·1``): it would change nothing but cost two ReLU layers.
    """
    clip = manipulation.clip
    if clip is not None:
        reach = weight.abs().sum(1)
        if bool((bias - reach >= clip[0]).all() and (bias + reach <= clip[1]).all()):
            clip = None
    network = _Parameterised(model, weight, bias, x.shape[1:], clip)
    k = weight.shape[1]
    for cuts in dict.fromkeys((1, splits)):
        centres = _cells(k, cuts, x)
        labels = label.view(1).expand(centres.shape[0])
        radius = 1.0 / cuts
        certificate = certify(
            network, centres, labels, eps=radius, method=method, bounds=(-1.0, 1.0)
        )
        if bool(certificate.certified.all()):
            return True
    return False


def verify_manipulation(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    manipulation: Manipulation,
    *,
    method: str = "crown",
    splits: int = 1,
    steps: int = 20,
    seed: int | None = 0,
) -> ManipulationVerification:
    """Verify each point against every manipulation of an affine family, or break it.

    The family's map ``t ↦ clip(x + A_x (mid + half·t))`` becomes a linear layer (and two
    ReLUs for the clip) in front of ``model``, and :func:`vulnscope.certify.certify`
    bounds the composed network over ``t ∈ [-1, 1]^k`` (Huang et al., CAV 2017, verify
    manipulations layer by layer; here the certificate is CROWN's or another of
    :data:`vulnscope.certify.METHODS`). ``A_x`` depends on the point, so each point gets
    its own composed network and its own :func:`certify` call. Points not certified are
    attacked in parameter space (box corners, then sign-gradient steps); a member that is
    misclassified, confirmed by a forward pass, is the counterexample.

    The verdict is about the set alone: a point whose clean input is misclassified can be
    verified for a set that does not contain the clean input (a brightness range away
    from 0). Certificates are sound up to float rounding (about 1e-6 of the logits).

    Args:
        model: the classifier, logits out; its layers must be ones certify can bound.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes the manipulations must keep.
        manipulation: the family, from :func:`brightness_contrast`, :func:`scratch` or
            :func:`free_pixels`.
        method: ``"ibp"``, ``"crown"``, ``"alpha-crown"`` or ``"dual"``.
        splits: where the whole box is not certified, cut it ``splits`` times along each
            parameter and certify the ``splits**k`` cells (at most 4096) in one batch: a
            tighter, slower answer (1: the whole box only).
        steps: gradient steps of the counterexample search (0: corners only).
        seed: seed of the search's random start and sampled corners.

    Returns:
        A :class:`ManipulationVerification`.

    Example:
        >>> import torch
        >>> from vulnscope.perturbations import brightness_contrast, verify_manipulation
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))
        ...     _ = model[1].bias.zero_()
        >>> x = torch.tensor([[[[0.9, 0.8], [0.1, 0.0]]]])
        >>> family = brightness_contrast(brightness=(-0.1, 0.1), contrast=(0.9, 1.1))
        >>> verify_manipulation(model, x, torch.tensor([0]), family).status
        ('verified',)

    """
    if not isinstance(manipulation, Manipulation):
        raise InvalidTypeError(
            "manipulation must be a Manipulation (from brightness_contrast, scratch or "
            f"free_pixels), got {describe(manipulation)}"
        )
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    x = manipulation.check_inputs(inputs)
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgumentError("inputs must be finite, got NaN or infinite entries")
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    method = check_choice(method, "method", METHODS)
    steps = check_int(steps, "steps", minimum=0)
    splits = check_int(splits, "splits")
    k = len(manipulation.parameter_names)
    if splits**k > _MAX_CELLS:
        raise InvalidArgumentError(
            f"splits must leave at most {_MAX_CELLS} cells: splits**k = {splits}**{k} for the "
            f"{k} parameters of {manipulation.name}, got splits={splits}"
        )
    generator = make_generator(check_seed(seed), x.device)
    n = x.shape[0]
    weights, biases = _parameterisation(manipulation, x)
    status = [
        "verified"
        if _certified(
            model, weights[i], biases[i], y[i], manipulation, x, method=method, splits=splits
        )
        else "unknown"
        for i in range(n)
    ]
    parameters = torch.full((n, k), math.nan, dtype=x.dtype, device=x.device)
    counterexamples = torch.full_like(x, math.nan)
    open_points = torch.tensor([s != "verified" for s in status], device=x.device)
    if bool(open_points.any()):
        with preserved_model_state(model):
            theta, logits = _search(
                check_model(model),
                manipulation,
                x[open_points],
                y[open_points],
                steps=steps,
                generator=generator,
            )
        check_logits(logits, theta.shape[0])
        broken = logits.argmax(1) != y[open_points]
        where = open_points.nonzero().squeeze(1)[broken]
        parameters[where] = theta[broken]
        counterexamples[where] = _manipulated(manipulation, x[where], theta[broken])
        for i in where.tolist():
            status[i] = "counterexample"
    return ManipulationVerification(
        status=tuple(status),
        counterexamples=counterexamples,
        parameters=parameters,
        parameter_names=manipulation.parameter_names,
        manipulation=manipulation.name,
        method=method,
    )


def verify_transformations(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    labels: Tensor,
    grid: Tensor | SpatialGrid,
    *,
    fill: Fill = 0.0,
    batch_size: int | None = None,
) -> ManipulationVerification:
    """Verify each point against a finite set of transformations by trying every one.

    The exhaustive check of :func:`~vulnscope.perturbations.spatial.worst_over_transformations`
    (bilinear rotations, translations and scalings of
    :mod:`~vulnscope.perturbations.transforms`): its worst transformed input is a
    misclassified one whenever any is, so one forward pass on it decides. The answer is
    ``"verified"`` or ``"counterexample"``, never ``"unknown"``. As for
    :func:`verify_manipulation`, the verdict is about the set alone: the untransformed
    input counts only if the grid holds the identity.

    Args:
        model: maps (M, C, H, W) inputs to (M, K) logits; its state is left as found.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes.
        grid: (G, 4) rows ``(rotation°, dx px, dy px, scale)``, or a
            :class:`~vulnscope.perturbations.transforms.SpatialGrid`.
        fill: value of pixels from outside the image, or ``"circular"``.
        batch_size: the most transformed images per model call (``None``: all at once).

    Returns:
        A :class:`ManipulationVerification` whose parameters are the counterexamples'
        transformation rows and whose method is ``"exhaustive"``.

    """
    params = grid.params() if isinstance(grid, SpatialGrid) else grid
    result = worst_over_transformations(
        model, inputs, labels, params, fill=fill, batch_size=batch_size
    )
    x = result.x_worst
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    with preserved_model_state(model), torch.no_grad():
        broken = check_logits(model(x), x.shape[0]).argmax(1) != y
    mask = broken.view(-1, 1, 1, 1)
    return ManipulationVerification(
        status=tuple("counterexample" if b else "verified" for b in broken.tolist()),
        counterexamples=torch.where(mask, x, torch.full_like(x, math.nan)),
        parameters=torch.where(
            broken.unsqueeze(1), result.worst_params, torch.full_like(result.worst_params, math.nan)
        ),
        parameter_names=PARAMETERS,
        manipulation="transformations",
        method="exhaustive",
    )
