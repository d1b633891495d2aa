from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import reference_norm
from vulnscope.attacks.norms import (
    lp_norm,
    project,
    project_ball,
    random_in_ball,
    steepest_ascent,
)

NORMS = ["linf", "l2", "l1"]
seeds = st.integers(0, 2**31 - 1)


def _l1_ball_by_bisection(v, eps):
    """Project onto the plain L1 ball: soft-threshold at the lam found by bisection."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        lo, hi = (lam, hi) if np.maximum(np.abs(v) - lam, 0).sum() > eps else (lo, lam)
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


def _dykstra_projection(z, low, high, eps, iterations=20000):
    """Projection onto {|d|_1 <= eps} ∩ [low, high] by Dykstra's alternating projections.

    Boyle and Dykstra (1986): alternating the two simple projections with correction
    terms converges to the projection onto the intersection.
    """
    d, p, q = z.copy(), np.zeros_like(z), np.zeros_like(z)
    for _ in range(iterations):
        y = np.clip(d + p, low, high)
        p_next = d + p - y
        d_next = _l1_ball_by_bisection(y + q, eps)
        q_next = y + q - d_next
        change = max(np.abs(d_next - d).max(), np.abs(p_next - p).max(), np.abs(q_next - q).max())
        d, p, q = d_next, p_next, q_next
        if change < 1e-14:
            break
    return d


@given(seed=seeds, norm=st.sampled_from(NORMS), dim=st.integers(1, 40))
def test_lp_norm_matches_torch_linalg(seed, norm, dim):
    delta = torch.randn(5, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(lp_norm(delta.reshape(5, 1, dim), norm), reference_norm(delta, norm))


@given(seed=seeds, norm=st.sampled_from(NORMS), eps=st.floats(0.0, 3.0), dim=st.integers(1, 30))
def test_project_ball_lands_inside_and_is_idempotent(seed, norm, eps, dim):
    z = 2 * torch.randn(4, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    projected = project_ball(z, norm, eps)
    assert (reference_norm(projected, norm) <= eps + 1e-9).all()
    torch.testing.assert_close(project_ball(projected, norm, eps), projected, atol=1e-9, rtol=0)
    inside = reference_norm(z, norm) <= eps
    torch.testing.assert_close(projected[inside], z[inside])


@given(seed=seeds, eps=st.floats(0.05, 2.0), dim=st.integers(1, 6))
def test_l1_ball_projection_matches_an_independent_solver(seed, eps, dim):
    z = 1.5 * torch.randn(
        1, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    expected = _dykstra_projection(z[0].numpy(), np.full(dim, -np.inf), np.full(dim, np.inf), eps)
    torch.testing.assert_close(
        project_ball(z, "l1", eps)[0], torch.from_numpy(expected), atol=2e-5, rtol=0
    )


@given(
    seed=seeds,
    eps=st.floats(0.05, 2.0),
    dim=st.integers(1, 6),
    norm=st.sampled_from(["l1", "linf"]),
)
def test_ball_box_projection_matches_dykstras_algorithm(seed, eps, dim, norm):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, dim, generator=generator, dtype=torch.float64)
    x_adv = x + 1.5 * torch.randn(1, dim, generator=generator, dtype=torch.float64)
    projected = project(x, x_adv, norm=norm, eps=eps, bounds=(0.0, 1.0))
    assert float((projected - x).abs().sum()) <= eps + 1e-9 or norm == "linf"
    if norm == "linf":
        expected = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0, 1)[0].numpy()
    else:
        low, high = -x[0].numpy(), 1 - x[0].numpy()
        expected = x[0].numpy() + _dykstra_projection((x_adv - x)[0].numpy(), low, high, eps)
        ours_cost = float(((projected - x_adv) ** 2).sum())
        assert ours_cost <= float(((expected - x_adv[0].numpy()) ** 2).sum()) + 1e-9
    torch.testing.assert_close(projected[0], torch.from_numpy(expected), atol=2e-5, rtol=0)


@given(seed=seeds, eps=st.floats(0.0, 2.0), dim=st.integers(1, 50), norm=st.sampled_from(NORMS))
def test_projection_is_feasible_and_a_true_projection(seed, eps, dim, norm):
    """Feasible, and <x_adv - p, w - p> <= 0 for feasible w (the projection theorem)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(3, dim, generator=generator, dtype=torch.float64)
    x_adv = x + torch.randn(3, dim, generator=generator, dtype=torch.float64)
    p = project(x, x_adv, norm=norm, eps=eps, bounds=(0.0, 1.0))
    assert (reference_norm(p - x, norm) <= eps + 1e-9).all()
    assert ((p >= 0) & (p <= 1)).all()
    if norm == "l2":
        return  # ball-then-clip is feasible but not the exact projection
    for _ in range(20):
        w = project(
            x,
            x + torch.randn(3, dim, generator=generator, dtype=torch.float64),
            norm=norm,
            eps=eps,
            bounds=(0.0, 1.0),
        )
        assert (((x_adv - p) * (w - p)).sum(dim=1) <= 1e-7).all()


def test_l1_projection_of_a_point_already_inside_is_unchanged():
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    x_adv = x + torch.tensor([[0.1, -0.1, 0.0, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(project(x, x_adv, norm="l1", eps=1.0, bounds=(0, 1)), x_adv)


@given(seed=seeds, dim=st.integers(1, 40))
def test_steepest_ascent_attains_the_dual_norm(seed, dim):
    """max over the unit ball of <g, d> is |g|_1 for Linf, |g|_2 for L2, |g|_inf for L1."""
    g = torch.randn(4, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for norm, dual in (("linf", "l1"), ("l2", "l2"), ("l1", "linf")):
        d = steepest_ascent(g, norm, l1_sparsity=1e-9)
        torch.testing.assert_close(reference_norm(d, norm), torch.ones(4, dtype=torch.float64))
        torch.testing.assert_close((g * d).sum(dim=1), reference_norm(g, dual))


def test_sparse_l1_step_moves_the_largest_coordinates():
    g = torch.tensor([[0.1, -3.0, 0.2, 2.0, 0.0, -0.5]])
    d = steepest_ascent(g, "l1", l1_sparsity=2 / 6)
    torch.testing.assert_close(d, torch.tensor([[0.0, -0.5, 0.0, 0.5, 0.0, 0.0]]))


def test_zero_gradient_gives_zero_direction():
    for norm in NORMS:
        assert (steepest_ascent(torch.zeros(2, 5), norm) == 0).all()


@pytest.mark.parametrize("norm", NORMS)
def test_random_in_ball_is_inside_and_reproducible(norm):
    like = torch.zeros(500, 3, 4)
    first = random_in_ball(like, norm, 0.7, generator=torch.Generator().manual_seed(3))
    again = random_in_ball(like, norm, 0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert (lp_norm(first, norm) <= 0.7 + 1e-6).all()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_random_in_ball_is_uniform(norm, dim):
    """Uniform in a ball: P(|d| <= r eps) = r^dim, and each coordinate has mean 0."""
    like = torch.zeros(40000, dim, dtype=torch.float64)
    draws = random_in_ball(like, norm, 2.0, generator=torch.Generator().manual_seed(0))
    for r in (0.5, 0.8):
        fraction = float((lp_norm(draws, norm) <= r * 2.0).double().mean())
        expected = r**dim
        assert abs(fraction - expected) < 4 * math.sqrt(expected * (1 - expected) / 40000) + 1e-3
    assert draws.mean(dim=0).abs().max() < 0.05
