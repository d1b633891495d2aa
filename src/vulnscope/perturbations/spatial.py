"""Worst-case rotations and translations: grid search, worst of k, and a first-order attack.

Engstrom et al., "Exploring the landscape of spatial robustness" (ICML 2019;
arXiv:1712.02779): a few pixels of translation and a small rotation, chosen adversarially,
break standard and Lp-robust classifiers alike. The three searches of the paper:

* :func:`spatial_worst_case`: the exhaustive grid (every combination), exact for the grid.
* :func:`worst_of_k`: ``k`` random transformations per point, the worst kept.
* :func:`spatial_first_order`: projected signed-gradient ascent of the cross-entropy on the
  transformation parameters (the paper's first-order attack; it finds less than the grid,
  since the loss is far from concave in the parameters).

Transformations follow :mod:`vulnscope.perturbations.transforms` (rows
``(rotation°, dx px, dy px, scale)``, rotate about the centre then translate, bilinear).
A point is *robust* when the model classifies it correctly unperturbed and under every
transformation tried; the worst transformation is a misclassified one if any, else the
one of lowest margin ``z_y - max_{j≠y} z_j``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bool,
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
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.checks import warn_if_training_mode
from vulnscope.models.state import preserved_model_state
from vulnscope.perturbations.transforms import (
    Fill,
    _resample,
    _sampling_grid,
    affine_transform,
    check_fill,
    default_spatial_grid,
    transformation_grid,
)

__all__ = [
    "TransformResult",
    "spatial_first_order",
    "spatial_worst_case",
    "worst_of_k",
    "worst_over_transformations",
]

Model = Callable[[Tensor], Tensor]

IMAGES_PER_CALL = 1024
"""Transformed images per model call by default: a small CNN runs about twice as fast per
image on batches of a thousand 8×8 images than on one batch of tens of thousands; on a
shared machine the digits CNN's grid search ran in 0.72-0.75x Foolbox's time with 1024
images per call, 0.70-1.08x with 2048 (``benchmarks/spatial.py``)."""

IMAGES_PER_STEP = 512
"""Transformed images per model call at most when a point leaves the search once fooled
(``grid_accuracy=False``): a few transformations per point while most points remain, so
that a fooled point is classified under few more, and more per point as points leave. A
call costs the digits CNN about as much as 30 images, and on Engstrom et al.'s grid
steps of 256 to 1024 images come within a few percent of the fewest calls and images."""


@dataclass(frozen=True)
class TransformResult:
    """The outcome of a search over transformations, per point.

    Attributes:
        robust: (N,) bool, correct on the clean input and on every transformation tried.
        x_worst: (N, C, H, W) the worst transformed input: misclassified if any was.
        worst_params: (N, 4) its ``(rotation, dx, dy, scale)``.
        worst_margin: (N,) its margin ``z_y - max_{j≠y} z_j`` (negative: misclassified).
        clean_correct: (N,) bool, correct on the untransformed input.
        grid: (G, 4) the transformations of a grid search (``None`` for random and
            first-order searches, whose transformations differ per point).
        grid_accuracy: (G,) the accuracy under each grid transformation alone (``None``
            likewise).

    """

    robust: Tensor
    x_worst: Tensor
    worst_params: Tensor
    worst_margin: Tensor
    clean_correct: Tensor
    grid: Tensor | None = None
    grid_accuracy: Tensor | None = None

    @property
    def accuracy(self) -> float:
        """Worst-case accuracy: the fraction of points robust to every transformation."""
        return float(self.robust.float().mean())


def _check_images(value: Any) -> Tensor:
    x = check_tensor(value, "inputs")
    if not x.is_floating_point() or x.ndim != 4 or x.shape[0] == 0:
        raise InvalidArgumentError(
            f"inputs must be a floating tensor of shape (N, C, H, W) with N >= 1, got {describe(x)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgumentError("inputs must be finite, got NaN or infinite entries")
    return x


def _check_translations(limit: float, shape: torch.Size, name: str) -> None:
    side = min(shape[-2], shape[-1])
    if limit >= side:
        raise InvalidArgumentError(
            f"{name} must be smaller than the image ({shape[-2]}x{shape[-1]} pixels: "
            f"|translation| < {side}), got {limit:g} pixels"
        )


def _margins(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(M, K) logits → (correct, margin ``z_y - max_{j≠y} z_j``), both (M,)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf).amax(1)
    return logits.argmax(1) == labels, true - others


@contextmanager
def _guarded(
    model: Any, inputs: Any, labels: Any
) -> Iterator[tuple[Model, Tensor, Tensor, Tensor]]:
    """Validate, keep the model's state, and classify the clean inputs (no gradients)."""
    model = check_model(model)
    x = _check_images(inputs).detach()
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    check_model_matches_inputs(model, x)
    with preserved_model_state(model), torch.inference_mode(False):
        warn_if_training_mode(model, stacklevel=5)
        with torch.no_grad():
            logits = check_logits(model(x), x.shape[0])
        check_labels_in_range(y, logits.shape[1], name="labels")
        yield model, x, y, logits.argmax(1) == y


def _harm_order(grid: Tensor) -> Tensor:
    """(G, 4) transformations → (G,) indices, the farthest from the identity first.

    Each parameter's distance from the identity (``|rotation|``, ``|dx|``, ``|dy|``,
    ``|log scale|``) over its largest in the grid, summed; ties keep the grid's order.
    Larger rotations and translations fool a model more often, so in this order the
    points that the grid fools leave an early-stopping search sooner.
    """

    def scaled(distance: Tensor) -> Tensor:
        return distance / distance.amax().clamp(min=torch.finfo(distance.dtype).tiny)

    far = (
        scaled(grid[:, 0].abs())
        + scaled(grid[:, 1:3].abs()).sum(1)  # one scale for both axes
        + scaled(grid[:, 3].log().abs())
    )
    return torch.sort(far, descending=True, stable=True).indices


def _search(
    model: Model,
    x: Tensor,
    y: Tensor,
    params: Tensor,
    fill: Fill,
    batch_size: int | None,
    *,
    every: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Classify the transformations of every point, ``batch_size`` images per call.

    Args:
        model: the guarded model.
        x: (N, C, H, W) images.
        y: (N,) labels.
        params: (G, 4) transformations shared by every point (their sampling grids are
            built once), or (N, G, 4), each point's own.
        fill: the fill of :func:`affine_transform`.
        batch_size: the most images per model call (``None``: :data:`IMAGES_PER_CALL`).
        every: classify every transformation of every point; else (for shared
            ``params``) a point leaves the search at its first misclassified chunk, the
            transformations taken farthest from the identity first (:func:`_harm_order`),
            as many per call as fill :data:`IMAGES_PER_STEP` (at most ``batch_size``)
            images with the points left.

    Returns:
        worst index (N,), worst wrong (N,) bool, worst margin (N,), correct count per
        transformation (G,) (meaningful only with ``every``).

    """
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    shared = params.ndim == 2
    g = params.shape[-2]
    per_call = IMAGES_PER_CALL if batch_size is None else batch_size
    grids = _sampling_grid(params, height, width, fill, x.dtype) if shared else None
    early = shared and not every
    order = _harm_order(params) if early else torch.arange(g, device=x.device)
    # Every transformation of a point in one call; when fooled points leave, all points
    # in one call instead, a few transformations at a time, so that few are classified
    # after one fools.
    block = per_call if early else max(1, per_call // g)
    step = min(per_call, IMAGES_PER_STEP) if early else per_call
    index = torch.zeros(n, dtype=torch.long, device=x.device)
    wrong = torch.zeros(n, dtype=torch.bool, device=x.device)
    margin = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
    counts = torch.zeros(g, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for start in range(0, n, block):
            rows = torch.arange(start, min(start + block, n), device=x.device)
            j = 0
            while j < g and len(rows):
                m = len(rows)
                cols = order[j : j + max(1, step // m)]
                k = len(cols)
                j += k
                if grids is not None:
                    grid = grids[cols].expand(m, k, height, width, 2)
                else:
                    chunk = params[rows][:, cols].reshape(m * k, 4)
                    grid = _sampling_grid(chunk, height, width, fill, x.dtype)
                    grid = grid.view(m, k, height, width, 2)
                images = _resample(x[rows], grid, fill).flatten(0, 1)
                logits = check_logits(model(images), m * k)
                correct, margins = _margins(logits, y[rows].repeat_interleave(k))
                correct, margins = correct.view(m, k), margins.view(m, k)
                counts[cols] += correct.sum(0)
                # The worst of the chunk: a misclassified one if any, then the lowest margin.
                keyed = margins.masked_fill(correct & ~correct.all(1, keepdim=True), math.inf)
                best = keyed.argmin(1)
                new_wrong = ~correct.gather(1, best[:, None])[:, 0]
                new_margin = margins.gather(1, best[:, None])[:, 0]
                old_wrong, old_margin = wrong[rows], margin[rows]
                better = (new_wrong & ~old_wrong) | (
                    (new_wrong == old_wrong) & (new_margin < old_margin)
                )
                index[rows] = torch.where(better, cols[best], index[rows])
                wrong[rows] = old_wrong | new_wrong
                margin[rows] = torch.where(better, new_margin, old_margin)
                if early:
                    rows = rows[~new_wrong]
    return index, wrong, margin, counts


def _result(
    x: Tensor,
    clean: Tensor,
    params: Tensor,
    found: tuple[Tensor, Tensor, Tensor, Tensor],
    fill: Fill,
    grid: Tensor | None,
) -> TransformResult:
    index, wrong, margin, counts = found
    worst = params[torch.arange(x.shape[0], device=x.device), index]
    with torch.no_grad():
        x_worst = affine_transform(x, worst, fill=fill)
    return TransformResult(
        robust=clean & ~wrong,
        x_worst=x_worst,
        worst_params=worst.detach(),
        worst_margin=margin,
        clean_correct=clean,
        grid=grid,
        grid_accuracy=None if grid is None else counts.to(x.dtype) / x.shape[0],
    )


def worst_over_transformations(
    model: Model,
    inputs: Tensor,
    labels: Tensor,
    params: Tensor,
    *,
    fill: Fill = 0.0,
    batch_size: int | None = None,
    grid_accuracy: bool = True,
) -> TransformResult:
    """Exhaustive search over a given finite set of transformations, shared by all points.

    Args:
        model: maps (M, C, H, W) inputs to (M, K) logits.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes.
        params: (G, 4) transformations ``(rotation°, dx px, dy px, scale)``.
        fill: value of pixels from outside the image, or ``"circular"``.
        batch_size: the most transformed images classified per model call (``None``:
            :data:`IMAGES_PER_CALL`); each call's images come from one resampling call.
        grid_accuracy: classify every transformation of every point, for the accuracy
            under each; ``False`` drops a point from the search once a transformation
            fools the model, trying the transformations farthest from the identity first
            (the same ``robust``, often much faster: a robust point still sees every
            transformation; the worst input is then the first misclassified chunk's
            worst, and ``grid_accuracy`` is ``None``).

    Returns:
        A :class:`TransformResult` with ``grid = params`` and its per-transformation
        accuracy.

    """
    fill = check_fill(fill)
    every = check_bool(grid_accuracy, "grid_accuracy")
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    grid = check_tensor(params, "params", of=" of transformations")
    if not grid.is_floating_point() or grid.ndim != 2 or grid.shape[1] != 4 or not len(grid):
        raise InvalidArgumentError(
            f"params must be a floating tensor of shape (G, 4), G >= 1, got {describe(grid)}"
        )
    with _guarded(model, inputs, labels) as (model, x, y, clean):
        grid = grid.to(device=x.device)
        _check_translations(float(grid[:, 1:3].abs().max()), x.shape, "params' translations")
        found = _search(model, x, y, grid, fill, batch, every=every)
        grid = grid.to(x.dtype)
        result = _result(x, clean, grid.expand(x.shape[0], *grid.shape), found, fill, grid)
        return result if every else dataclasses.replace(result, grid_accuracy=None)


def spatial_worst_case(
    model: Model,
    inputs: Tensor,
    labels: Tensor,
    *,
    rotations: Sequence[float] | None = None,
    translations: Sequence[float] | None = None,
    scales: Sequence[float] = (1.0,),
    fill: Fill = 0.0,
    batch_size: int | None = None,
    grid_accuracy: bool = True,
) -> TransformResult:
    """Engstrom et al.'s grid attack: every combination of rotation, (dx, dy) and scale.

    Args:
        model: maps (M, C, H, W) inputs to (M, K) logits; its state is left as found.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes.
        rotations: angles in degrees (counter-clockwise about the centre); ``None``: those
            of :func:`~vulnscope.perturbations.transforms.default_spatial_grid` for the
            image's size (±30°).
        translations: offsets in pixels, fractional allowed, tried along both axes (every
            ``(dx, dy)`` pair); each smaller in magnitude than the image's sides; ``None``:
            the default grid's (±3 px on 28×28 and 32×32, ±1 px on 8×8).
        scales: positive zoom factors.
        fill: value of pixels from outside the image, or ``"circular"`` (wrap around).
        batch_size: the most transformed images per model call (``None``:
            :data:`IMAGES_PER_CALL`).
        grid_accuracy: as :func:`worst_over_transformations` (``False``: faster, the
            same ``robust``, no per-transformation accuracy).

    Returns:
        A :class:`TransformResult`; ``grid`` is :func:`transformation_grid`'s (G, 4).

    Raises:
        InvalidArgumentError: an empty grid, a translation as large as the image, bad
            inputs or labels.

    Example:
        >>> import torch
        >>> from vulnscope.perturbations.transforms import default_spatial_grid
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
        >>> grid = default_spatial_grid(x.shape)
        >>> result = spatial_worst_case(model, x, y, **grid._asdict())
        >>> result.grid_accuracy.shape
        torch.Size([81])

    """
    if rotations is None or translations is None:
        default = default_spatial_grid(_check_images(inputs).shape)
        rotations = default.rotations if rotations is None else rotations
        translations = default.translations if translations is None else translations
    grid = transformation_grid(rotations, translations, scales)
    return worst_over_transformations(
        model, inputs, labels, grid, fill=fill, batch_size=batch_size, grid_accuracy=grid_accuracy
    )


def _check_range(value: Any, name: str, *, symmetric: bool = True) -> tuple[float, float]:
    """A limit ``r`` (the range ``[-r, r]``) or a pair ``(low, high)`` with low <= high."""
    if symmetric and not isinstance(value, (tuple, list)):
        limit = check_real(value, name, minimum=0.0)
        return -limit, limit
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidArgumentError(f"{name} must be a pair (low, high), got {describe(value)}")
    low, high = check_real(value[0], f"{name}[0]"), check_real(value[1], f"{name}[1]")
    if low > high:
        raise InvalidArgumentError(f"{name} must satisfy low <= high, got ({low}, {high})")
    return low, high


def _ranges(x: Tensor, rotation: Any, translation: Any, scale: Any) -> tuple[Tensor, Tensor]:
    """The box of parameters as (4,) centres and (4,) half-widths.

    ``None`` for the rotation or the translation: the default grid's range for ``x``'s size.
    """
    if rotation is None or translation is None:
        default = default_spatial_grid(x.shape)
        rotation = max(default.rotations) if rotation is None else rotation
        translation = max(default.translations) if translation is None else translation
    rot = _check_range(rotation, "rotation")
    shift = _check_range(translation, "translation")
    _check_translations(max(abs(shift[0]), abs(shift[1])), x.shape, "translation")
    zoom = _check_range(scale, "scale", symmetric=False)
    if zoom[0] <= 0:
        raise InvalidArgumentError(f"scale must be positive, got ({zoom[0]}, {zoom[1]})")
    low = x.new_tensor([rot[0], shift[0], shift[0], zoom[0]])
    high = x.new_tensor([rot[1], shift[1], shift[1], zoom[1]])
    return (low + high) / 2, (high - low) / 2


def worst_of_k(
    model: Model,
    inputs: Tensor,
    labels: Tensor,
    *,
    k: int,
    rotation: float | tuple[float, float] | None = None,
    translation: float | tuple[float, float] | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    fill: Fill = 0.0,
    seed: int | None,
    batch_size: int | None = None,
) -> TransformResult:
    """Engstrom et al.'s random search: ``k`` uniform transformations per point, worst kept.

    Their data-augmentation-style attack ("worst-of-10"): cheap, and close to the grid.

    Args:
        model: maps (M, C, H, W) inputs to (M, K) logits; its state is left as found.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes.
        k: transformations per point.
        rotation: degrees, ``r`` for ``[-r, r]`` or a pair ``(low, high)``; ``None``:
            the default grid's range for the image's size (±30°).
        translation: pixels along each axis, ``t`` for ``[-t, t]`` or a pair; ``None``:
            the default grid's (±3 px on 28×28 and 32×32, ±1 px on 8×8).
        scale: ``(low, high)`` zoom factors, positive.
        fill: as :func:`spatial_worst_case`.
        seed: seeds the draws (``None``: fresh entropy).
        batch_size: the most transformed images per model call.

    Returns:
        A :class:`TransformResult` without a grid.

    """
    count = check_int(k, "k")
    fill = check_fill(fill)
    batch = None if batch_size is None else check_int(batch_size, "batch_size")
    key = check_seed(seed)
    with _guarded(model, inputs, labels) as (model, x, y, clean):
        centre, half = _ranges(x, rotation, translation, scale)
        generator = make_generator(key, x.device)
        unit = torch.rand(x.shape[0], count, 4, generator=generator, device=x.device)
        params = centre + half * (2 * unit.to(x.dtype) - 1)
        found = _search(model, x, y, params, fill, batch)
        return _result(x, clean, params, found, fill, None)


def spatial_first_order(
    model: Model,
    inputs: Tensor,
    labels: Tensor,
    *,
    rotation: float | tuple[float, float] | None = None,
    translation: float | tuple[float, float] | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    fill: Fill = 0.0,
    seed: int | None,
) -> TransformResult:
    """Engstrom et al.'s first-order attack: PGD on the transformation parameters.

    Each parameter is rescaled to ``z ∈ [-1, 1]`` over its range; from a uniform random
    start, ``steps`` signed-gradient ascent steps on the cross-entropy, each projected back
    onto the box, per restart. Every iterate is classified, and the worst of all iterates
    and restarts is kept, so more steps or restarts never find less.

    Args:
        model: maps (M, C, H, W) inputs to (M, K) logits, differentiably; its state is
            left as found.
        inputs: (N, C, H, W) images.
        labels: (N,) int64 classes.
        rotation: degrees, ``r`` for ``[-r, r]`` or a pair ``(low, high)``; ``None``:
            the default grid's range for the image's size (±30°).
        translation: pixels along each axis, ``t`` for ``[-t, t]`` or a pair; ``None``:
            the default grid's (±3 px on 28×28 and 32×32, ±1 px on 8×8).
        scale: ``(low, high)`` zoom factors, positive.
        steps: ascent steps per restart.
        step_size: in units of each parameter's half-range (default ``2.5 / steps``, Madry
            et al.'s rule, so a run can cross the box).
        restarts: random starts.
        fill: as :func:`spatial_worst_case` (``"circular"`` is differentiable almost
            everywhere).
        seed: seeds the random starts.

    Returns:
        A :class:`TransformResult` without a grid.

    """
    n_steps = check_int(steps, "steps", minimum=0)
    n_restarts = check_int(restarts, "restarts")
    size = 2.5 / max(n_steps, 1) if step_size is None else check_real(step_size, "step_size")
    if size <= 0:
        raise InvalidArgumentError(f"step_size must be > 0, got {size}")
    fill = check_fill(fill)
    key = check_seed(seed)
    with _guarded(model, inputs, labels) as (model, x, y, clean):
        centre, half = _ranges(x, rotation, translation, scale)
        generator = make_generator(key, x.device)
        tried = []
        for _ in range(n_restarts):
            z = 2 * torch.rand(x.shape[0], 4, generator=generator, device=x.device) - 1
            z = z.to(x.dtype)
            for step in range(n_steps + 1):
                params = centre + half * z
                tried.append(params)
                if step == n_steps:
                    break
                with torch.enable_grad():
                    z_var = z.detach().requires_grad_(True)
                    images = affine_transform(x, centre + half * z_var, fill=fill)
                    loss = functional.cross_entropy(model(images), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, z_var)
                z = (z + size * grad.sign()).clamp(-1.0, 1.0).detach()
        params = torch.stack(tried, dim=1)
        found = _search(model, x, y, params, fill, None)
        return _result(x, clean, params, found, fill, None)
