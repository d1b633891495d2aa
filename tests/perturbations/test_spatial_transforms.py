"""affine_transform against independent references: torch.roll, torch.rot90, the fill identity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vulnscope.errors import InvalidArgumentError
from vulnscope.perturbations.transforms import (
    affine_transform,
    default_spatial_grid,
    transformation_grid,
)


def _images(seed: int, shape: tuple[int, ...] = (3, 2, 7, 9)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rows(*rows: list[float], n: int = 3) -> torch.Tensor:
    params = torch.tensor(rows, dtype=torch.float64)
    return params.expand(n, *params.shape).clone() if len(rows) > 1 else params.expand(n, 4)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), dx=st.integers(-6, 6), dy=st.integers(-4, 4))
def test_integer_translation_is_a_roll(seed: int, dx: int, dy: int) -> None:
    x = _images(seed)
    params = _rows([0.0, dx, dy, 1.0])
    rolled = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    assert torch.allclose(affine_transform(x, params, fill="circular"), rolled, atol=1e-12)
    shifted = affine_transform(x, params)
    rows = slice(max(dy, 0), x.shape[2] + min(dy, 0))
    cols = slice(max(dx, 0), x.shape[3] + min(dx, 0))
    assert torch.allclose(shifted[..., rows, cols], rolled[..., rows, cols], atol=1e-12)
    outside = torch.ones_like(shifted, dtype=torch.bool)
    outside[..., rows, cols] = False
    assert bool((shifted[outside].abs() < 1e-12).all())


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    angle=st.floats(-45, 45),
    shift=st.floats(-2.5, 2.5),
    scale=st.floats(0.7, 1.4),
    fill=st.floats(-1, 1),
)
def test_constant_fill_is_the_image_padded_with_it(seed, angle, shift, scale, fill) -> None:
    # Pad the image with the fill far enough that no sampling point leaves the pad: the
    # same transformation about the same centre, cropped, is the fill's by construction.
    x = _images(seed)
    params = _rows([angle, shift, -shift / 2, scale])
    pad = 16
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
    expected = affine_transform(padded, params)[..., pad:-pad, pad:-pad]
    assert torch.allclose(affine_transform(x, params, fill=fill), expected, atol=1e-12)


def test_identity_and_rotation_by_90_degrees() -> None:
    x = _images(0, (2, 1, 8, 8)).float()
    assert torch.equal(affine_transform(x, _rows([0.0, 0.0, 0.0, 1.0], n=2).float()), x)
    for quarter in (1, 2, 3):
        turned = affine_transform(x, _rows([90.0 * quarter, 0.0, 0.0, 1.0], n=2).float())
        # Counter-clockwise on screen, as numpy and torch rot90 turn an array.
        assert torch.allclose(turned, torch.rot90(x, quarter, dims=(2, 3)), atol=1e-6)


def test_a_group_of_transformations_equals_one_call_each() -> None:
    x = _images(1)
    grid = torch.tensor([[0.0, 0.0, 0.0, 1.0], [17.0, 0.4, -1.2, 0.9], [-30.0, 1.0, 1.0, 1.1]])
    params = grid.to(torch.float64).expand(3, 3, 4)
    grouped = affine_transform(x, params, fill=0.3)
    assert grouped.shape == (3, 3, 2, 7, 9)
    for g in range(3):
        assert torch.allclose(grouped[:, g], affine_transform(x, params[:, g], fill=0.3))


def test_grids() -> None:
    grid = transformation_grid([-5.0, 5.0], [-1.0, 0.0, 1.0], [1.0])
    assert grid.shape == (18, 4)
    pairs = {(float(dx), float(dy)) for dx, dy in grid[:, 1:3]}
    assert len(pairs) == 9
    small = default_spatial_grid((1, 8, 8))
    assert small.translations == (-1.0, 0.0, 1.0)
    assert small.rotations[0] == -30.0 and small.rotations[-1] == 30.0
    large = default_spatial_grid((28, 28))
    assert (len(large.rotations), large.translations) == (31, (-3.0, -1.5, 0.0, 1.5, 3.0))
    assert default_spatial_grid((3, 32, 32)).translations[-1] == 3.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: transformation_grid([], [0.0]), "rotations must hold at least one"),
        (lambda: transformation_grid([0.0], []), "translations must hold at least one"),
        (lambda: transformation_grid([0.0], [0.0], [0.0]), r"scales\[0\] must be > 0"),
        (lambda: affine_transform(torch.rand(2, 8, 8), torch.zeros(2, 4)), "inputs must be"),
        (lambda: affine_transform(torch.rand(2, 1, 8, 8), torch.zeros(3, 4)), "params must"),
        (
            lambda: affine_transform(torch.rand(1, 1, 8, 8), torch.zeros(1, 4)),
            "positive scale",
        ),
        (
            lambda: affine_transform(torch.rand(1, 1, 4, 4), torch.eye(4)[:1], fill="wrap"),
            "fill must be a real number or 'circular'",
        ),
    ],
)
def test_bad_input(call, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        call()
