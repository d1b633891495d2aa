r"""Rotations, translations and scalings of image batches, and grids of them.

The geometric perturbations of Engstrom et al., "Exploring the landscape of spatial
robustness" (ICML 2019; arXiv:1712.02779): a rotation by at most a few tens of degrees
and a translation by a few pixels, resampled bilinearly.

**Convention.** A transformation is a row ``(rotation, dx, dy, scale)``. In pixel
coordinates relative to the image centre (``u`` to the right, ``v`` down), the content at
``p = (u, v)`` moves to

.. math::

    q = s\,R(\theta)\,p + (dx, dy), \qquad
    R(\theta) = \begin{pmatrix}\cos\theta & \sin\theta\\
    -\sin\theta & \cos\theta\end{pmatrix},

that is: scaled by ``s`` and rotated by ``θ`` degrees counter-clockwise on screen about the
image centre, then moved ``dx`` pixels right and ``dy`` pixels down (Engstrom et al.'s
order: rotate, then translate). One pixel is one pixel: with ``align_corners=False`` the
normalised coordinates of :func:`torch.nn.functional.affine_grid` span ``W`` pixels over
a length of 2, so a translation by 1 px is ``2 / W`` there (``2 / H`` vertically), and
content moved by an integer number of pixels lands exactly on the pixel grid.

Each output pixel is the bilinear interpolation of the input at the inverse image of its
centre; where that falls outside the image, the missing neighbours take the value
``fill`` (a constant), or the image repeats periodically (``fill="circular"``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional

from vulnscope._validation import check_real, check_tensor, describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "Fill",
    "SpatialGrid",
    "affine_transform",
    "check_fill",
    "default_spatial_grid",
    "transformation_grid",
]

Fill = float | Literal["circular"]
"""A constant value for pixels from outside the image, or ``"circular"`` to wrap around."""

PARAMETERS = ("rotation", "dx", "dy", "scale")
"""The columns of a transformation row."""


def check_fill(value: Any, name: str = "fill") -> Fill:
    """A constant fill (a finite real number) or ``"circular"``."""
    if value == "circular" and isinstance(value, str):
        return "circular"
    if isinstance(value, str):
        raise InvalidArgumentError(
            f"{name} must be a real number or 'circular', got {describe(value)}"
        )
    return check_real(value, name)


def _check_params(value: Any, n: int) -> Tensor:
    params = check_tensor(value, "params", of=" of transformations")
    if (
        not params.is_floating_point()
        or params.ndim not in (2, 3)
        or params.shape[0] != n
        or params.shape[-1] != 4
    ):
        raise InvalidArgumentError(
            f"params must be a floating tensor of shape ({n}, 4) or ({n}, G, 4) of rows "
            f"(rotation degrees, dx px, dy px, scale) for {n} inputs, got "
            f"{describe(params)}"
        )
    if not bool(torch.isfinite(params).all()) or bool((params[..., 3] <= 0).any()):
        raise InvalidArgumentError(
            "params must be finite with a positive scale (last column), got "
            f"scales in [{float(params[..., 3].min()):.6g}, {float(params[..., 3].max()):.6g}]"
        )
    return params


def _inverse_maps(params: Tensor, height: int, width: int) -> Tensor:
    """(M, 4) transformations → (M, 2, 3) output-to-input maps in normalised coordinates."""
    theta = params[:, 0] * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    shift = params[:, 1:3]
    scale = params[:, 3]
    # p = R(θ)ᵀ (q - d) / s in pixels; R(θ)ᵀ = [[cos, -sin], [sin, cos]].
    a00, a01, a10, a11 = cos / scale, -sin / scale, sin / scale, cos / scale
    b0 = -(a00 * shift[:, 0] + a01 * shift[:, 1])
    b1 = -(a10 * shift[:, 0] + a11 * shift[:, 1])
    # Normalised coordinates are D·pixels with D = diag(2/W, 2/H): D A D⁻¹ and D b.
    row0 = torch.stack([a00, a01 * (height / width), b0 * (2.0 / width)], dim=1)
    row1 = torch.stack([a10 * (width / height), a11, b1 * (2.0 / height)], dim=1)
    return torch.stack([row0, row1], dim=1)


def _wrap(grid: Tensor, height: int, width: int) -> Tensor:
    """Normalised sampling points → the same points wrapped into a 1-pixel circular pad."""
    sizes = grid.new_tensor([width, height])
    pixels = ((grid + 1.0) * sizes - 1.0) / 2.0
    wrapped = torch.remainder(pixels + 0.5, sizes) - 0.5
    # Wrapped pixels lie in [-0.5, size - 0.5): their bilinear neighbours are -1..size,
    # all inside the padded image, whose pixel k is the original's (k - 1) mod size.
    return (2.0 * (wrapped + 1.0) + 1.0) / (sizes + 2.0) - 1.0


def _sampling_grid(
    params: Tensor, height: int, width: int, fill: Fill, dtype: torch.dtype
) -> Tensor:
    """(M, 4) transformations → (M, H, W, 2) sampling points of :func:`_resample`'s source.

    The affine maps are built in the wider of ``params``' and ``dtype``'s precision and
    cast once; a grid shared by many images is built once and expanded over them.
    """
    wide = torch.promote_types(params.dtype, dtype)
    maps = _inverse_maps(params.to(wide), height, width).to(dtype)
    grid = functional.affine_grid(maps, [len(params), 1, height, width], align_corners=False)
    return _wrap(grid, height, width) if fill == "circular" else grid


def _resample(inputs: Tensor, grid: Tensor, fill: Fill) -> Tensor:
    """(n, C, H, W) images, (n, g, H, W, 2) sampling points → (n, g, C, H, W), bilinear.

    One ``grid_sample`` call: the ``g`` grids of an image are stacked along the height of
    one sampling grid, so the image is never copied ``g`` times, and ``grid`` may be a
    view expanded over the images. Zero padding is the zero fill; a constant ``c``
    resamples ``x - c`` and adds ``c`` back, which is exact because the bilinear weights
    sum to one, so no in-image mask is resampled beside the channels.
    """
    n, channels, height, width = inputs.shape
    g = grid.shape[1]
    if fill == "circular":
        source = functional.pad(inputs, (1, 1, 1, 1), mode="circular")
    else:
        source = inputs if fill == 0.0 else inputs - fill
    sampled = functional.grid_sample(
        source,
        grid.reshape(n, g * height, width, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    if isinstance(fill, float) and fill != 0.0:
        sampled = sampled + fill
    return sampled.view(n, channels, g, height, width).transpose(1, 2)


def affine_transform(inputs: Tensor, params: Tensor, *, fill: Fill = 0.0) -> Tensor:
    """Rotate, translate and scale every image by its own transformations, bilinearly.

    One :func:`~torch.nn.functional.affine_grid` and one
    :func:`~torch.nn.functional.grid_sample` call for the whole batch: the ``G``
    transformations of an image are stacked along the height of one sampling grid, so
    the image is never copied ``G`` times. Differentiable in ``inputs`` and ``params``.

    A constant ``fill`` is exact: bilinear sampling with zero padding gives
    ``Σ_in w_i x_i``, and the weights ``w_i`` (in the image or not) sum to one, so
    resampling ``x - fill`` with zero padding and adding ``fill`` back is the
    interpolation of the image padded with ``fill``. ``fill="circular"`` wraps the
    sampling points modulo the image size and samples a one-pixel circular pad, so
    translations are periodic.

    Args:
        inputs: images, floating, shape (N, C, H, W).
        params: transformations, shape (N, 4) (one per image) or (N, G, 4) (G per image),
            rows ``(rotation, dx, dy, scale)``: degrees counter-clockwise, pixels right,
            pixels down, a positive factor. See the module docstring for the convention.
        fill: the value of pixels from outside the image, or ``"circular"``.

    Returns:
        Shape (N, C, H, W) for (N, 4) params, (N, G, C, H, W) for (N, G, 4) params, in the
        dtype of ``inputs``. ``(0, 0, 0, 1)`` returns the image (to rounding), and an
        integer translation shifts it exactly.

    Raises:
        InvalidArgumentError: wrong shapes, a non-positive scale, an unknown fill.

    """
    inputs = check_tensor(inputs, "inputs")
    if not inputs.is_floating_point() or inputs.ndim != 4 or inputs.shape[0] == 0:
        raise InvalidArgumentError(
            f"inputs must be a floating tensor of shape (N, C, H, W) with N >= 1, "
            f"got {describe(inputs)}"
        )
    fill = check_fill(fill)
    n, _, height, width = inputs.shape
    params = _check_params(params, n)
    grouped = params.ndim == 3
    g = params.shape[1] if grouped else 1
    if g == 0:
        raise InvalidArgumentError("params must hold at least one transformation per input")
    grid = _sampling_grid(params.reshape(n * g, 4), height, width, fill, inputs.dtype)
    out = _resample(inputs, grid.view(n, g, height, width, 2), fill)
    return out if grouped else out[:, 0]


def _check_values(values: Any, name: str, *, positive: bool = False) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor)):
        raise InvalidTypeError(f"{name} must be a sequence of real numbers, got {describe(values)}")
    items = values.tolist() if isinstance(values, Tensor) else list(values)
    if not items:
        raise InvalidArgumentError(f"{name} must hold at least one value, got an empty grid")
    return tuple(
        check_real(v, f"{name}[{i}]", minimum=0.0 if positive else None, exclusive=positive)
        for i, v in enumerate(items)
    )


def transformation_grid(
    rotations: Sequence[float], translations: Sequence[float], scales: Sequence[float] = (1.0,)
) -> Tensor:
    """Every combination of rotation, horizontal and vertical translation, and scale.

    Args:
        rotations: angles in degrees.
        translations: offsets in pixels, tried along each axis, so every ``(dx, dy)`` pair
            of them appears.
        scales: positive factors.

    Returns:
        (G, 4) float64 rows ``(rotation, dx, dy, scale)``, ``G = R·T²·S``, rotation
        slowest and scale fastest.

    Raises:
        InvalidArgumentError: an empty sequence, a non-finite value, a scale <= 0.

    """
    rs = _check_values(rotations, "rotations")
    ts = _check_values(translations, "translations")
    ss = _check_values(scales, "scales", positive=True)
    return torch.tensor(list(itertools.product(rs, ts, ts, ss)), dtype=torch.float64)


class SpatialGrid(NamedTuple):
    """The values of a grid search: pass as ``spatial_worst_case(..., **grid._asdict())``."""

    rotations: tuple[float, ...]
    translations: tuple[float, ...]
    scales: tuple[float, ...] = (1.0,)

    def params(self) -> Tensor:
        """The (G, 4) rows of :func:`transformation_grid`."""
        return transformation_grid(self.rotations, self.translations, self.scales)


def _linspace(limit: float, count: int) -> tuple[float, ...]:
    return tuple(float(v) for v in torch.linspace(-limit, limit, count, dtype=torch.float64))


def default_spatial_grid(image_shape: Sequence[int]) -> SpatialGrid:
    """Engstrom et al.'s grid (±3 px, ±30°) scaled to the image.

    Engstrom et al. search ±3 px in 5 steps per axis and ±30° in 31 steps on 28×28 and
    32×32 images. Here the translation limit is ``max(1, round(3·m/28))`` pixels for the
    smaller side ``m`` (3 px for 28 and 32, 1 px for 8×8), in ``min(5, 2·limit + 1)``
    steps per axis (whole pixels for small images), and the rotations ±30° in
    ``2·round(15·m/28) + 1`` steps, between 3 and 31 (31 for 28×28; 9 steps of 7.5° for
    8×8, where a 2° step moves a corner pixel by a fifth of a pixel). The 8×8 grid has
    9·3·3 = 81 transformations, the 28×28 one 31·5·5 = 775.

    Args:
        image_shape: ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``: the last two are used.

    Returns:
        A :class:`SpatialGrid` of rotations and translations (scale 1).

    """
    if len(image_shape) < 2:
        raise InvalidArgumentError(
            f"image_shape must end with (H, W), got {describe(tuple(image_shape))}"
        )
    side = min(int(image_shape[-1]), int(image_shape[-2]))
    if side < 2:
        raise InvalidArgumentError(f"image_shape must have H, W >= 2, got {tuple(image_shape)}")
    limit = max(1, round(3 * side / 28))
    rotation_steps = min(31, max(3, 2 * round(15 * side / 28) + 1))
    return SpatialGrid(
        rotations=_linspace(30.0, rotation_steps),
        translations=_linspace(float(limit), min(5, 2 * limit + 1)),
    )
