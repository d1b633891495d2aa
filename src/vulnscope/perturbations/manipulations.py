r"""Image manipulations that are affine in their parameters: the sets Huang et al. verify.

Huang, Kwiatkowska, Wang and Wu ("Safety verification of deep neural networks", CAV 2017)
verify that no manipulation of a set (a scratch, a change of lighting) changes a
classification. Here a family is *affine in its parameters* θ, which range over a box:

.. math::

    x'(\theta) = \operatorname{clip}\big(x + A_x\,\theta\big),
    \qquad \theta \in [\theta_{lo}, \theta_{hi}]^k,

with ``A_x`` possibly depending on the point (a contrast change scales the image itself).
:class:`Manipulation` is such a family; :func:`brightness_contrast`, :func:`scratch` and
:func:`free_pixels` build the three of this module. :mod:`vulnscope.perturbations.verified`
certifies them over their whole box.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from vulnscope._validation import (
    check_bounds,
    check_real,
    check_tensor,
    describe,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "BrightnessContrast",
    "FreePixels",
    "Manipulation",
    "Scratch",
    "brightness_contrast",
    "free_pixels",
    "scratch",
]


def _check_interval(value: Any, name: str) -> tuple[float, float]:
    """A pair ``(low, high)`` of finite numbers with ``low <= high`` (equal: a fixed value)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise InvalidTypeError(f"{name} must be a pair (low, high), got {describe(value)}")
    low, high = check_real(value[0], f"{name}[0]"), check_real(value[1], f"{name}[1]")
    if low > high:
        raise InvalidArgumentError(
            f"{name} must satisfy low <= high (an empty box otherwise), got ({low}, {high})"
        )
    return low, high


def _check_mask(value: Any) -> Tensor:
    mask = check_tensor(value, "mask", of=" of pixels")
    if mask.dtype != torch.bool or mask.ndim not in (2, 3):
        raise InvalidArgumentError(
            f"mask must be a bool tensor of shape (H, W) or (C, H, W), got {describe(mask)}"
        )
    if not bool(mask.any()):
        raise InvalidArgumentError("mask must select at least one pixel, got an all-False mask")
    return mask.detach().clone()


def _check_images(inputs: Any, name: str = "inputs") -> Tensor:
    x = check_tensor(inputs, name)
    if not x.is_floating_point() or x.ndim != 4 or x.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} must be images: a floating tensor of shape (N, C, H, W) with N >= 1, "
            f"got {describe(x)}"
        )
    return x


class Manipulation(abc.ABC):
    """A family of image manipulations affine in parameters θ that range over a box.

    Subclasses give the manipulation in closed form (:meth:`manipulate`) and as the affine
    map ``x + A_x θ`` (:meth:`affine`); :func:`verify_manipulation` certifies the latter and
    attacks the former, and the tests check that they agree.

    Attributes:
        name: the family's name.
        parameter_names: the names of θ's k components.
        lower, upper: (k,) float64 bounds of the parameter box (``lower <= upper``).
        clip: the input bounds the result is clipped to, or ``None`` for no clip.

    """

    name: ClassVar[str]
    parameter_names: tuple[str, ...]
    lower: Tensor
    upper: Tensor
    clip: tuple[float, float] | None

    @property
    def parameter_box(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)``, two (k,) tensors."""
        return self.lower, self.upper

    def check_inputs(self, inputs: Any) -> Tensor:
        """The inputs, checked to be images (N, C, H, W) this family applies to."""
        return _check_images(inputs)

    @abc.abstractmethod
    def manipulate(self, x: Tensor, theta: Tensor) -> Tensor:
        """The manipulated images before the clip: (N, C, H, W) and (N, k) to (N, C, H, W)."""

    @abc.abstractmethod
    def affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(offset, matrix)`` with ``manipulate(x, θ) = offset + matrix @ θ``.

        Shapes: ``offset`` (N, C, H, W), ``matrix`` (N, C, H, W, k).
        """

    def apply(self, x: Tensor, theta: Tensor) -> Tensor:
        """The manipulated images, clipped to ``clip``: (N, C, H, W) and (N, k)."""
        x = self.check_inputs(x)
        k = len(self.parameter_names)
        theta = check_tensor(theta, "theta")
        if theta.shape != (x.shape[0], k):
            raise InvalidArgumentError(
                f"theta must have shape ({x.shape[0]}, {k}) for {x.shape[0]} inputs and the "
                f"{k} parameters of {self.name}, got shape {tuple(theta.shape)}"
            )
        out = self.manipulate(x, theta.to(x.dtype))
        return out if self.clip is None else out.clamp(*self.clip)


@dataclass(frozen=True, eq=False)
class BrightnessContrast(Manipulation):
    """``x' = c·x + b``: θ = (b, c), brightness b and contrast c, the same on every pixel."""

    lower: Tensor
    upper: Tensor
    clip: tuple[float, float] | None
    name: ClassVar[str] = "brightness-contrast"
    parameter_names: tuple[str, ...] = ("brightness", "contrast")

    def manipulate(self, x: Tensor, theta: Tensor) -> Tensor:
        """``c·x + b`` per image."""
        b, c = theta[:, 0].view(-1, 1, 1, 1), theta[:, 1].view(-1, 1, 1, 1)
        return c * x + b

    def affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Offset 0; columns ``1`` (brightness) and ``x`` (contrast)."""
        return torch.zeros_like(x), torch.stack([torch.ones_like(x), x], dim=-1)


@dataclass(frozen=True, eq=False)
class _Masked(Manipulation):
    """A family acting on the pixels of a mask (H, W) (every channel) or (C, H, W)."""

    mask: Tensor
    lower: Tensor
    upper: Tensor
    clip: tuple[float, float] | None

    def check_inputs(self, inputs: Any) -> Tensor:
        """Images whose (H, W) or (C, H, W) match the mask's shape."""
        x = _check_images(inputs)
        shape = tuple(x.shape[-self.mask.ndim :])
        if shape != tuple(self.mask.shape):
            raise InvalidArgumentError(
                f"mask must match the images: shape {tuple(x.shape[-self.mask.ndim :])} for "
                f"inputs of shape {tuple(x.shape)}, got mask shape {tuple(self.mask.shape)}"
            )
        return x

    def full_mask(self, x: Tensor) -> Tensor:
        """The mask broadcast to one image, (C, H, W) bool."""
        return self.mask.to(x.device).expand(x.shape[1:])


@dataclass(frozen=True, eq=False)
class Scratch(_Masked):
    """A scratch: the mask's pixels drawn with one free intensity s, ``x' = x(1-m) + s m``."""

    name: ClassVar[str] = "scratch"
    parameter_names: tuple[str, ...] = ("intensity",)

    def manipulate(self, x: Tensor, theta: Tensor) -> Tensor:
        """The image with every masked pixel set to its intensity."""
        return torch.where(self.full_mask(x), theta[:, 0].view(-1, 1, 1, 1), x)

    def affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Offset ``x`` off the mask and 0 on it; one column, the mask."""
        mask = self.full_mask(x).to(x.dtype)
        return x * (1 - mask), mask.expand_as(x).unsqueeze(-1)


@dataclass(frozen=True, eq=False)
class FreePixels(_Masked):
    """Each masked pixel free in a box: θ_j is the value of the j-th masked pixel.

    The pixels are numbered in row-major order of the mask; an (H, W) mask sets every
    channel of a pixel to its one value, a (C, H, W) mask frees each channel on its own.
    """

    name: ClassVar[str] = "free-pixels"
    parameter_names: tuple[str, ...] = ()

    def manipulate(self, x: Tensor, theta: Tensor) -> Tensor:
        """The image with the masked pixels replaced by θ."""
        out = x.clone()
        if self.mask.ndim == 2:
            out[:, :, self.mask.to(x.device)] = theta.unsqueeze(1)
        else:
            out[:, self.mask.to(x.device)] = theta
        return out

    def affine(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Offset ``x`` off the mask; one one-hot column per masked pixel."""
        mask = self.full_mask(x)
        pixels = self.mask.to(x.device).flatten().nonzero().squeeze(1)
        columns = torch.zeros(self.mask.numel(), pixels.numel(), dtype=x.dtype, device=x.device)
        columns[pixels, torch.arange(pixels.numel(), device=x.device)] = 1.0
        matrix = columns.view(*self.mask.shape, -1).expand(*x.shape[1:], -1)
        return x * (~mask).to(x.dtype), matrix.unsqueeze(0).expand(x.shape[0], *matrix.shape)


def _box(values: Sequence[tuple[float, float]]) -> tuple[Tensor, Tensor]:
    box = torch.tensor(values, dtype=torch.float64).view(-1, 2)
    return box[:, 0].clone(), box[:, 1].clone()


def _check_clip(clip: Any) -> tuple[float, float] | None:
    return None if clip is None else check_bounds(clip, "clip")


def brightness_contrast(
    *,
    brightness: tuple[float, float] = (0.0, 0.0),
    contrast: tuple[float, float] = (1.0, 1.0),
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> BrightnessContrast:
    """Every lighting change ``x' = c·x + b`` with b in ``brightness`` and c in ``contrast``.

    Args:
        brightness: ``(low, high)`` of the added constant b.
        contrast: ``(low, high)`` of the factor c.
        clip: input bounds the result is clipped to (``None``: no clip).

    """
    lower, upper = _box(
        [_check_interval(brightness, "brightness"), _check_interval(contrast, "contrast")]
    )
    return BrightnessContrast(lower=lower, upper=upper, clip=_check_clip(clip))


def scratch(
    mask: Tensor,
    *,
    intensity: tuple[float, float] = (0.0, 1.0),
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> Scratch:
    """A scratch along ``mask`` (bool, (H, W) or (C, H, W)) drawn with any intensity in range."""
    checked = _check_mask(mask)
    lower, upper = _box([_check_interval(intensity, "intensity")])
    return Scratch(mask=checked, lower=lower, upper=upper, clip=_check_clip(clip))


def free_pixels(
    mask: Tensor,
    *,
    box: tuple[float, float] = (0.0, 1.0),
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> FreePixels:
    """The pixels of ``mask`` (bool, (H, W) or (C, H, W)), each free in ``box`` on its own."""
    checked = _check_mask(mask)
    low, high = _check_interval(box, "box")
    count = int(checked.sum())
    lower, upper = _box([(low, high)] * count)
    names = tuple(f"pixel{j}" for j in range(count))
    return FreePixels(
        mask=checked, lower=lower, upper=upper, clip=_check_clip(clip), parameter_names=names
    )
