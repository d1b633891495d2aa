"""Verified manipulations: certificates against exhaustive grids of the same family."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.perturbations.manipulations import (
    Manipulation,
    brightness_contrast,
    free_pixels,
    scratch,
)
from vulnscope.perturbations.transforms import affine_transform, transformation_grid
from vulnscope.perturbations.verified import (
    _parameterisation,
    _Parameterised,
    verify_manipulation,
    verify_transformations,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    ).eval()


def _points(n: int = 12) -> tuple[nn.Module, Tensor, Tensor]:
    model = _model()
    x = torch.rand(n, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _line() -> Tensor:
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2, 1:4] = True
    return mask


def _two_pixels() -> Tensor:
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[1, 1] = mask[3, 2] = True
    return mask


FAMILIES = {
    "brightness-contrast": lambda: brightness_contrast(brightness=(-0.1, 0.1), contrast=(0.8, 1.2)),
    "scratch": lambda: scratch(_line(), intensity=(0.0, 1.0)),
    "free-pixels": lambda: free_pixels(_two_pixels(), box=(0.0, 1.0)),
}


def _grid(manipulation: Manipulation, steps: int) -> Tensor:
    """Every combination of ``steps`` values per parameter across its box, (G, k)."""
    axes = [
        torch.linspace(float(lo), float(hi), steps)
        for lo, hi in zip(manipulation.lower, manipulation.upper, strict=True)
    ]
    return torch.tensor(list(itertools.product(*[a.tolist() for a in axes])))


@pytest.mark.parametrize(
    "manipulation",
    [
        brightness_contrast(brightness=(-0.3, 0.2), contrast=(0.5, 1.5), clip=None),
        scratch(_line(), intensity=(0.2, 0.9), clip=None),
        scratch(torch.ones(2, 5, 5, dtype=torch.bool).tril(), intensity=(0.0, 1.0), clip=None),
        free_pixels(_two_pixels(), box=(-1.0, 2.0), clip=None),
        free_pixels(torch.eye(5, dtype=torch.bool).expand(2, 5, 5), box=(0.0, 1.0), clip=None),
    ],
    ids=["brightness", "scratch", "scratch-per-channel", "pixels", "pixels-per-channel"],
)
def test_the_affine_map_reproduces_the_closed_form(manipulation: Manipulation) -> None:
    mask = getattr(manipulation, "mask", None)
    channels = 2 if mask is None or mask.ndim == 2 else mask.shape[0]
    x = torch.rand(4, channels, 5, 5, generator=torch.Generator().manual_seed(1))
    k = len(manipulation.parameter_names)
    u = torch.rand(4, k, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theta = (manipulation.lower + u * (manipulation.upper - manipulation.lower)).float()
    offset, matrix = manipulation.affine(x)
    affine = offset + (matrix * theta.view(4, 1, 1, 1, k)).sum(-1)
    torch.testing.assert_close(affine, manipulation.apply(x, theta), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.1, 0.7), None])
def test_the_composed_network_is_the_model_on_the_manipulated_input(
    name: str, clip: tuple[float, float] | None
) -> None:
    # normalised t in [-1, 1]^k, the linear layer and the ReLU clip give apply() exactly
    family = FAMILIES[name]()
    manipulation = type(family)(**{**family.__dict__, "clip": clip})
    model, x, _ = _points(3)
    k = len(manipulation.parameter_names)
    t = torch.rand(3, k, generator=torch.Generator().manual_seed(3)) * 2 - 1
    theta = (
        manipulation.lower + (t.double() + 1) / 2 * (manipulation.upper - manipulation.lower)
    ).float()
    weights, biases = _parameterisation(manipulation, x)
    with torch.no_grad():
        expected = model(manipulation.apply(x, theta))
        for i in range(3):
            network = _Parameterised(model, weights[i], biases[i], x.shape[1:], clip)
            torch.testing.assert_close(network(t[i : i + 1])[0], expected[i], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_certificates_agree_with_an_exhaustive_grid_and_counterexamples_are_real(
    name: str,
) -> None:
    manipulation = FAMILIES[name]()
    model, x, y = _points()
    result = verify_manipulation(model, x, y, manipulation, seed=0)
    assert set(result.status) <= {"verified", "counterexample", "unknown"}
    # verified points survive every member of a fine grid (21 per parameter), and a point
    # the grid breaks is never verified
    grid = _grid(manipulation, 21)
    with torch.no_grad():
        correct = torch.stack(
            [
                model(manipulation.apply(x, theta.expand(len(x), -1))).argmax(1) == y
                for theta in grid
            ]
        ).all(0)
    verified, found = result.verified, result.falsified
    assert bool(correct[verified].all()), "a certificate contradicted by the grid"
    assert bool(verified.any()) and bool((~correct).any()) and bool(found.any())
    # counterexamples lie in the family's box, are apply() of their parameters, and are
    # misclassified by a plain forward pass
    theta = result.parameters[found].double()
    assert bool((theta >= manipulation.lower - 1e-6).all())
    assert bool((theta <= manipulation.upper + 1e-6).all())
    torch.testing.assert_close(
        result.counterexamples[found], manipulation.apply(x[found], result.parameters[found])
    )
    with torch.no_grad():
        assert bool((model(result.counterexamples[found]).argmax(1) != y[found]).all())
    assert bool(result.parameters[~found].isnan().all())
    assert bool(result.counterexamples[~found].isnan().all())


def test_splitting_the_box_verifies_more_and_is_never_contradicted() -> None:
    manipulation = FAMILIES["brightness-contrast"]()
    model, x, y = _points()
    whole = verify_manipulation(model, x, y, manipulation, steps=0)
    split = verify_manipulation(model, x, y, manipulation, splits=4, steps=0)
    grid = _grid(manipulation, 21)
    with torch.no_grad():
        correct = torch.stack(
            [
                model(manipulation.apply(x, theta.expand(len(x), -1))).argmax(1) == y
                for theta in grid
            ]
        ).all(0)
    assert bool(correct[split.verified].all())
    assert bool((split.verified >= whole.verified).all())
    assert int(split.verified.sum()) > int(whole.verified.sum())


def test_the_finite_case_is_exhaustive_and_never_unknown() -> None:
    model, x, y = _points()
    grid = transformation_grid([-5.0, 0.0, 5.0], [0.0, 0.5])
    result = verify_transformations(model, x, y, grid)
    with torch.no_grad():
        images = affine_transform(x, grid.float().expand(len(x), -1, -1))
        wrong = torch.stack([model(images[:, g]).argmax(1) != y for g in range(len(grid))]).any(0)
    assert set(result.status) <= {"verified", "counterexample"}
    assert torch.equal(result.falsified, wrong)
    assert bool(wrong.any()) and bool((~wrong).any())
    with torch.no_grad():
        assert bool((model(result.counterexamples[wrong]).argmax(1) != y[wrong]).all())
    rows = result.parameters[wrong].double()
    assert all(bool((grid == row).all(1).any()) for row in rows)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: brightness_contrast(brightness=(0.2, 0.1)),
            InvalidArgumentError,
            "brightness must satisfy low <= high",
        ),
        (
            lambda: brightness_contrast(contrast=(1.0,)),  # type: ignore[arg-type]
            InvalidTypeError,
            "contrast must be a pair",
        ),
        (
            lambda: scratch(torch.zeros(5, 5, dtype=torch.bool)),
            InvalidArgumentError,
            "at least one pixel",
        ),
        (lambda: scratch(torch.ones(5, 5)), InvalidArgumentError, "mask must be a bool tensor"),
        (
            lambda: free_pixels(_two_pixels(), box=(1.0, 0.0)),
            InvalidArgumentError,
            "box must satisfy",
        ),
        (lambda: scratch(_line(), clip=(1.0, 0.0)), InvalidArgumentError, "clip must satisfy"),
    ],
)
def test_bad_families_raise_one_clear_error(
    build: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("inputs", "manipulation", "kwargs", "error", "match"),
    [
        (torch.rand(2, 1, 6, 6), scratch(_line()), {}, InvalidArgumentError, "mask must match"),
        (
            torch.rand(2, 25),
            brightness_contrast(),
            {},
            InvalidArgumentError,
            r"inputs must be images",
        ),
        (
            torch.rand(2, 1, 5, 5),
            "brightness",
            {},
            InvalidTypeError,
            "manipulation must be a Manipulation",
        ),
        (
            torch.rand(2, 1, 5, 5),
            brightness_contrast(),
            {"method": "milp"},
            InvalidArgumentError,
            "method",
        ),
        (
            torch.rand(2, 1, 5, 5),
            free_pixels(torch.ones(5, 5, dtype=torch.bool)),
            {"splits": 2},
            InvalidArgumentError,
            r"splits must leave at most 4096 cells",
        ),
    ],
)
def test_bad_inputs_raise_one_clear_error(
    inputs: Tensor,
    manipulation: object,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        verify_manipulation(_model(), inputs, torch.tensor([0, 1]), manipulation, **kwargs)  # type: ignore[arg-type]
