"""Random and semi-random noise against the closed forms of a linear classifier."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vulnscope.perturbations.noise import noise_robustness


def linear_problem(seed: int, d: int, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Logits ``(0, f(x))`` with ``f(x) = w.x + b``: the class flips where ``f`` changes sign."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    b = torch.randn((), generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.stack([torch.zeros_like(b), b]))
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return model.eval(), x, w


WIDE = (-50.0, 50.0)


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 12))
def test_random_noise_follows_the_closed_form(seed, d):
    model, x, w = linear_problem(seed, d, n=3)
    y = model(x).argmax(1)
    f = x @ w + model.bias[1]
    result = noise_robustness(
        model,
        x,
        y,
        kind="random",
        directions=5,
        max_norm=20.0,
        bounds=WIDE,
        bisection_steps=40,
        seed=seed,
    )
    # The directions the search drew, redrawn: one generator, seeded, Gaussian, normalised.
    gauss = torch.randn((3, 5, d), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    units = gauss / gauss.norm(dim=2, keepdim=True)
    expected = f.abs()[:, None] / (units @ w).abs()
    within = expected < 20.0
    torch.testing.assert_close(
        result.direction_norms[within], expected[within], rtol=1e-4, atol=0.0
    )
    assert torch.isinf(result.direction_norms[~within]).all()
    torch.testing.assert_close(result.adversarial_norms, f.abs() / w.norm(), rtol=1e-4, atol=0.0)
    assert result.predicted == pytest.approx(math.sqrt(d))


@settings(max_examples=6)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 12), data=st.data())
def test_semi_random_noise_follows_the_closed_form(seed, d, data):
    m = data.draw(st.integers(1, d))
    model, x, w = linear_problem(seed, d, n=3)
    y = model(x).argmax(1)
    f = x @ w + model.bias[1]
    result = noise_robustness(
        model,
        x,
        y,
        kind="semi-random",
        subspace_dim=m,
        bounds=WIDE,
        bisection_steps=40,
        seed=seed,
    )
    gauss = torch.randn((3, d, m), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    basis = torch.linalg.qr(gauss).Q
    projected = (basis @ basis.transpose(1, 2) @ w).norm(dim=1)
    torch.testing.assert_close(result.noise_norms, f.abs() / projected, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(result.ratios, w.norm() / projected, rtol=1e-4, atol=0.0)
    assert result.predicted == pytest.approx(math.sqrt(d / m))
    assert result.direction_norms is None


def test_the_whole_space_is_the_adversarial_direction():
    model, x, _ = linear_problem(3, 6, n=4)
    y = model(x).argmax(1)
    result = noise_robustness(model, x, y, kind="semi-random", subspace_dim=6, bounds=WIDE)
    torch.testing.assert_close(result.ratios, torch.ones(4, dtype=x.dtype), rtol=1e-4, atol=0.0)


def test_random_ratios_grow_like_the_square_root_of_the_dimension():
    # A cheap sanity check of Fawzi et al.'s scaling, not a statistical test: for a
    # linear classifier the ratio is |w| / |w.u| = 1 / |cos|, whose median over random
    # directions is about 1.5 sqrt(d) (|N(0, 1)|'s median is 0.674).
    medians = []
    for d in (4, 64):
        model, x, _ = linear_problem(0, d, n=4)
        y = model(x).argmax(1)
        result = noise_robustness(model, x, y, directions=40, bounds=WIDE, seed=0)
        medians.append(result.median_ratio / math.sqrt(d))
    assert all(0.7 < value < 3.0 for value in medians), medians


def test_same_seed_same_result_and_misclassified_points_are_left_out():
    model, x, _ = linear_problem(1, 5, n=4)
    y = model(x).argmax(1)
    y[0] = 1 - y[0]
    first = noise_robustness(model, x, y, directions=3, bounds=WIDE, seed=7)
    again = noise_robustness(model, x, y, directions=3, bounds=WIDE, seed=7)
    assert torch.equal(first.direction_norms, again.direction_norms)
    assert first.correct.tolist() == [False, True, True, True]
    assert first.noise_norms[0] == 0.0 and math.isnan(first.ratios[0])
    assert math.isfinite(first.median_ratio)


def test_clip_keeps_the_noisy_points_in_the_box():
    seen = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach())
        return torch.stack([x.sum(1) - 1.0, torch.zeros(x.shape[0], dtype=x.dtype)], 1)

    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.int64)
    noise_robustness(model, x, y, directions=3, clip=True, max_norm=5.0, seed=0)
    assert all(((t >= 0) & (t <= 1)).all() for t in seen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "semi-random", "subspace_dim": 0}, "subspace_dim must be an integer >= 1"),
        ({"kind": "semi-random", "subspace_dim": 5}, r"subspace_dim must be in 1\.\.4"),
        ({"kind": "semi-random"}, "subspace_dim is required"),
        ({"kind": "random", "subspace_dim": 2}, "subspace_dim is only taken by"),
        ({"directions": 0}, "directions must be an integer >= 1"),
        ({"kind": "gaussian"}, "kind must be one of"),
        ({"quantile": 1.5}, r"quantile must be in \[0, 1\]"),
        ({"max_norm": 0.0}, "max_norm must be > 0"),
        ({"adversarial_norms": torch.ones(3)}, r"adversarial_norms must be .* shape \(2,\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = torch.nn.Linear(4, 2).double()
    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        noise_robustness(model, x, torch.zeros(2, dtype=torch.int64), **kwargs)
