"""The simplex projection against an independent reference, and the budgeted path search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vulnscope.cloning.simplex import (
    argmax_gap,
    check_budget,
    check_probabilities,
    max_l1_budget,
    perturb_along,
    project_to_simplex,
    sum_zero_projection,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError


def reference_projection(z: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by bisection on the threshold of ``max(z - θ, 0)``.

    ``Σ max(z_j - θ, 0)`` falls from >= 1 at ``θ = max z - 1`` to 0 at ``θ = max z``: no
    sorting, no shared code with the library's sort-based algorithm.
    """
    z = np.asarray(z, dtype=np.float64)
    low = z.max(-1, keepdims=True) - 1.0
    high = z.max(-1, keepdims=True)
    for _ in range(200):
        theta = 0.5 * (low + high)
        mass = np.maximum(z - theta, 0.0).sum(-1, keepdims=True)
        low = np.where(mass > 1.0, theta, low)
        high = np.where(mass > 1.0, high, theta)
    return np.maximum(z - 0.5 * (low + high), 0.0)


def softmax(logits: np.ndarray) -> torch.Tensor:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1)


def gap(q: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``q_c - max_{j≠c} q_j`` written out with a loop."""
    out = []
    for row, c in zip(q, classes.tolist(), strict=True):
        others = torch.cat([row[:c], row[c + 1 :]])
        out.append(row[c] - others.max())
    return torch.stack(out)


rows = st.integers(1, 6)
classes_ = st.integers(2, 7)


@st.composite
def real_matrices(draw, low=-4.0, high=4.0):
    shape = (draw(rows), draw(classes_))
    return draw(arrays(np.float64, shape, elements=st.floats(low, high, width=64)))


# ---------------------------------------------------------------- projection


@given(real_matrices())
def test_projection_matches_a_bisection_reference_and_the_kkt_conditions(z):
    q = project_to_simplex(torch.from_numpy(z))
    assert q.dtype == torch.float64
    np.testing.assert_allclose(q.numpy(), reference_projection(z), atol=1e-12)
    assert bool((q >= 0).all())
    np.testing.assert_allclose(q.sum(-1).numpy(), 1.0, atol=1e-12)
    # KKT: z - q is the same θ on the support, and z_j <= θ off it.
    for z_row, q_row in zip(z, q.numpy(), strict=True):
        support = q_row > 1e-12
        theta = (z_row - q_row)[support]
        assert np.ptp(theta) < 1e-12
        assert np.all(z_row[~support] <= theta[0] + 1e-12)


@given(real_matrices(), st.integers(0, 2**31))
def test_projection_is_the_closest_point_of_the_simplex(z, seed):
    q = project_to_simplex(torch.from_numpy(z)).numpy()
    rng = np.random.default_rng(seed)
    others = rng.dirichlet(np.ones(z.shape[1]) * 0.5, size=(64, z.shape[0]))
    closest = np.linalg.norm(q - z, axis=-1)
    assert np.all(np.linalg.norm(others - z, axis=-1) >= closest - 1e-12)


def test_projection_leaves_probability_vectors_alone_and_takes_any_leading_shape():
    p = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(p, -1)
    torch.testing.assert_close(project_to_simplex(p), p, atol=1e-15, rtol=0)
    assert project_to_simplex(torch.tensor([3.0, 1.0])).tolist() == [1.0, 0.0]
    assert project_to_simplex(torch.tensor([[2, 2]])).tolist() == [[0.5, 0.5]]


def test_projection_rejects_bad_input():
    with pytest.raises(InvalidTypeError, match=r"z must be a torch\.Tensor, got"):
        project_to_simplex([0.5, 0.5])
    with pytest.raises(InvalidArgumentError, match="z must be finite"):
        project_to_simplex(torch.tensor([0.5, math.nan]))
    with pytest.raises(InvalidArgumentError, match=r"z must have shape \(..., C\)"):
        project_to_simplex(torch.tensor(1.0))
    with pytest.raises(InvalidTypeError, match="z must hold real numbers"):
        project_to_simplex(torch.tensor([True, False]))


def test_sum_zero_projection_removes_the_mean_only():
    d = torch.tensor([[1.0, 2.0, 6.0]])
    torch.testing.assert_close(sum_zero_projection(d), torch.tensor([[-2.0, -1.0, 3.0]]))


# ---------------------------------------------------------------- budgets


def test_max_l1_budget_is_two_minus_two_over_c_and_attained_only_at_a_tie():
    assert max_l1_budget(2) == 1.0
    assert max_l1_budget(10) == pytest.approx(1.8)
    # The uniform vector and a vertex share arg-max 0 (first index) and are 2(1 - 1/C) apart.
    uniform = torch.full((1, 4), 0.25, dtype=torch.float64)
    vertex = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float((uniform - vertex).abs().sum()) == pytest.approx(max_l1_budget(4))


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [
        (
            1.9,
            InvalidArgumentError,
            r"budget must be < 1\.8 for 10 classes: two probability "
            r"vectors with the same arg-max are closer than 2\(1 - 1/C\) in L1, got 1\.9",
        ),
        (1.8, InvalidArgumentError, r"budget must be < 1\.8 for 10 classes"),
        (0.0, InvalidArgumentError, r"budget must be > 0\.0, got 0\.0"),
        (-0.1, InvalidArgumentError, r"budget must be > 0\.0, got -0\.1"),
        (math.nan, InvalidArgumentError, "budget must be finite, got nan"),
        (math.inf, InvalidArgumentError, "budget must be finite, got inf"),
        ("0.1", InvalidTypeError, r"budget must be a real number, got '0\.1' \(str\)"),
        (True, InvalidTypeError, "budget must be a real number, got True"),
        (None, InvalidTypeError, "budget must be a real number, got None"),
    ],
)
def test_check_budget_refuses_what_cannot_keep_the_class(budget, error, message):
    with pytest.raises(error, match=message):
        check_budget(budget, 10)


def test_check_budget_returns_a_float():
    assert check_budget(1, 3) == 1.0
    assert isinstance(check_budget(np.float32(0.5), 3), float)


def test_check_probabilities_names_the_problem():
    with pytest.raises(
        InvalidArgumentError, match="probs must have rows summing to one, got row 1"
    ):
        check_probabilities(torch.tensor([[0.5, 0.5], [0.6, 0.6]]))
    with pytest.raises(InvalidArgumentError, match="probs must be non-negative"):
        check_probabilities(torch.tensor([[1.5, -0.5]]))
    with pytest.raises(InvalidArgumentError, match=r"shape \(B, C\) with C >= 2"):
        check_probabilities(torch.tensor([[1.0]]))
    with pytest.raises(InvalidTypeError, match="probs must have a floating dtype"):
        check_probabilities(torch.tensor([[1, 0]]))
    with pytest.raises(InvalidTypeError, match=r"probs must be a torch\.Tensor"):
        check_probabilities(np.array([[0.5, 0.5]]))
    with pytest.raises(InvalidArgumentError, match="probs must be finite"):
        check_probabilities(torch.tensor([[math.nan, 0.5]]))


def test_argmax_gap_matches_a_loop():
    q = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), -1)
    classes = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(argmax_gap(q, classes), gap(q, classes))


# ---------------------------------------------------------------- the path search


def path_points(p: np.ndarray, d: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``Π(p + t d)`` for each step (T,) by the reference projection: (T, C).

    ``d`` is made sum-zero and unit L1 first.
    """
    d = d - d.mean()
    d = d / np.abs(d).sum()
    return reference_projection(p[None] + steps[:, None] * d[None])


def keeps(q: np.ndarray, c: int, required: float) -> np.ndarray:
    """Rows of ``q`` (T, C) whose arg-max is ``c`` with a gap of at least ``required``."""
    others = np.delete(q, c, axis=-1)
    return (np.argmax(q, -1) == c) & (q[:, c] - others.max(-1) >= required)


def test_a_step_inside_the_simplex_is_the_straight_line():
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    d = torch.tensor([[1.0, -3.0, 2.0]])
    q, l1 = perturb_along(p, d, 0.12)
    expected = p + 0.12 * torch.tensor([[1.0, -3.0, 2.0]], dtype=torch.float64) / 6.0
    torch.testing.assert_close(q, expected, atol=1e-15, rtol=0)
    assert float(l1) == pytest.approx(0.12, abs=1e-15)


def test_the_path_follows_the_projection_past_the_boundary():
    p = torch.tensor([[0.6, 0.35, 0.05]], dtype=torch.float64)
    d = torch.tensor([[0.0, 1.0, -1.0]])
    q, l1 = perturb_along(p, d, 0.2)
    # Along d/2, p + t d/2 leaves the simplex at t = 0.1 (entry 2 hits zero); past it the
    # projection takes θ = (t/2 - 0.05)/2 off the other two, and L1 = t/2 + 0.05: the
    # budget 0.2 is reached at t = 0.3, θ = 0.05.
    torch.testing.assert_close(q[0], torch.tensor([0.55, 0.45, 0.0], dtype=torch.float64))
    assert float(l1) == pytest.approx(0.2, abs=1e-12)


@st.composite
def problems(draw):
    classes = draw(st.integers(2, 6))
    batch = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0, 8.0]))
    logits = draw(arrays(np.float64, (batch, classes), elements=st.floats(-1, 1))) * scale
    # Directions on a grid: entries of d that differ do so by enough for the path to
    # settle on its face of the simplex within the search's range of steps.
    directions = draw(arrays(np.float64, (batch, classes), elements=st.integers(-8, 8)))
    budget = draw(st.floats(0.01, 0.999)) * max_l1_budget(classes)
    margin = draw(st.sampled_from([0.0, 1e-3, 0.05]))
    return softmax(logits), torch.from_numpy(directions), budget, margin


@given(problems(), st.booleans())
def test_published_rows_are_probabilities_with_the_class_kept_and_the_budget_spent(
    problem, both_signs
):
    p, d, budget, margin = problem
    q, l1 = perturb_along(p, d, budget, margin=margin, both_signs=both_signs)
    assert q.dtype == torch.float64 and q.shape == p.shape
    assert bool((q >= 0).all())
    torch.testing.assert_close(
        q.sum(-1), torch.ones(p.shape[0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(l1, (q - p).abs().sum(-1), atol=0, rtol=0)
    classes = p.argmax(-1)
    assert torch.equal(q.argmax(-1), classes)
    required = torch.minimum(gap(p, classes), torch.tensor(margin, dtype=torch.float64))
    assert bool((gap(q, classes) >= required).all())
    assert bool((l1 <= budget + 1e-12).all())
    # Moving by L1 b lowers the gap by at most b, so a row with gap >= b + margin can take
    # the whole budget (along d or -d: one of the two paths leaves class c).
    easy = (gap(p, classes) >= budget + margin) & (
        (d - d.mean(-1, keepdim=True)).abs().sum(-1) > 1e-9
    )
    if both_signs:
        assert bool(((l1 - budget).abs() < 1e-9)[easy].all())


@given(problems(), st.booleans())
def test_a_row_falls_back_only_where_no_point_of_either_path_keeps_the_class_at_the_budget(
    problem, both_signs
):
    p, d, budget, margin = problem
    _, l1 = perturb_along(p, d, budget, margin=margin, both_signs=both_signs)
    steps = np.concatenate([[0.0], np.geomspace(1e-5, 1e4, 4000)])
    signs = (1.0, -1.0) if both_signs else (1.0,)
    for row in np.flatnonzero((l1 < budget - 1e-9).numpy()):
        p_row, d_row = p[row].numpy(), d[row].numpy()
        if np.abs(d_row - d_row.mean()).sum() < 1e-12:
            assert float(l1[row]) == 0.0
            continue
        c = int(np.argmax(p_row))
        required = min(margin, float(gap(p[row : row + 1], torch.tensor([c]))[0]))
        best = 0.0
        for sign in signs:
            points = path_points(p_row, sign * d_row, steps)
            distances = np.abs(points - p_row).sum(-1)[keeps(points, c, required + 1e-9)]
            # Nowhere along the path is the budget reached with the class kept...
            assert np.all(distances < budget + 1e-9)
            best = max(best, distances.max(initial=0.0))
        # ...and the fallback goes at least as far as any point that keeps it.
        assert float(l1[row]) >= best - 1e-6


def test_the_plus_sign_is_used_where_it_works():
    p = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]])
    q, _ = perturb_along(p, d, 0.1)
    torch.testing.assert_close(q[0], torch.tensor([0.55, 0.3, 0.15], dtype=torch.float64))
    torch.testing.assert_close(q[1], torch.tensor([0.65, 0.3, 0.05], dtype=torch.float64))


def test_the_minus_sign_is_used_where_the_plus_sign_loses_the_class():
    p = torch.tensor([[0.45, 0.4, 0.15]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 1.0, 0.0]])
    q, l1 = perturb_along(p, d, 0.2)
    torch.testing.assert_close(q[0], torch.tensor([0.55, 0.3, 0.15], dtype=torch.float64))
    assert float(l1) == pytest.approx(0.2, abs=1e-12)


def test_one_sign_only_falls_back_to_the_largest_step_that_keeps_the_class():
    p = torch.tensor([[0.45, 0.4, 0.15]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 1.0, 0.0]])
    q, l1 = perturb_along(p, d, 0.2, margin=0.01, both_signs=False)
    # Along (-1, 1, 0)/2 the gap 0.05 - t shrinks to the margin 0.01 at t = 0.04.
    torch.testing.assert_close(q[0], torch.tensor([0.43, 0.42, 0.15], dtype=torch.float64))
    assert float(l1) == pytest.approx(0.04, abs=1e-12)


def test_a_gap_below_the_margin_is_never_shrunk():
    p = torch.tensor([[0.4, 0.3995, 0.2005]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 1.0, 0.0]])
    q, l1 = perturb_along(p, d, 0.2, margin=1e-3, both_signs=False)
    assert float(l1) < 1e-12
    torch.testing.assert_close(q, p, atol=1e-12, rtol=0)


def test_the_better_sign_wins_the_fallback():
    # +d loses the class at once; -d takes it to the budget's largest kept step.
    p = torch.tensor([[0.5, 0.45, 0.05]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 1.0, 0.0]])
    q, l1 = perturb_along(p, d, 1.2, margin=0.0)
    assert q[0, 0] > p[0, 0]
    assert float(l1) == pytest.approx(1.0, abs=1e-9)  # -d ends at e_0, L1 2 (1 - 0.5)


def test_a_zero_direction_leaves_the_row_unchanged():
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    q, l1 = perturb_along(p, torch.ones(1, 3), 0.1)
    assert torch.equal(q, p)
    assert float(l1) == 0.0


def test_exact_ties_keep_the_first_index():
    p = torch.tensor([[0.4, 0.4, 0.2]], dtype=torch.float64)
    for direction in ([[0.0, 1.0, -1.0]], [[1.0, 0.0, -1.0]], [[1.0, -1.0, 0.0]]):
        q, _ = perturb_along(p, torch.tensor(direction), 0.3)
        assert int(q.argmax()) == 0


@given(
    st.integers(2, 6),
    st.floats(0, 1e-6),
    arrays(np.float64, (4, 6), elements=st.floats(-1, 1)),
    st.floats(0.01, 0.9),
)
def test_near_ties_never_change_the_class(classes, offset, directions, fraction):
    logits = np.zeros((4, classes))
    logits[:, 0] = offset
    logits[1, 1] = offset
    logits[2, :] = [offset * k for k in range(classes)]
    p = softmax(logits)
    d = torch.from_numpy(directions[:, :classes])
    q, _ = perturb_along(p, d, fraction * max_l1_budget(classes))
    assert torch.equal(q.argmax(-1), p.argmax(-1))


def test_float32_probabilities_are_accepted_and_promoted():
    p = torch.softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)
    q, l1 = perturb_along(p, torch.tensor([[0.0, 1.0, -1.0]]), 0.05)
    assert q.dtype == l1.dtype == torch.float64
    assert float(l1) == pytest.approx(0.05, abs=1e-12)


def test_perturb_along_rejects_bad_input():
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    d = torch.tensor([[0.0, 1.0, -1.0]])
    with pytest.raises(InvalidArgumentError, match=r"budget must be < 1\.33333 for 3 classes"):
        perturb_along(p, d, 1.5)
    with pytest.raises(InvalidArgumentError, match="budget must be > 0"):
        perturb_along(p, d, 0.0)
    with pytest.raises(InvalidArgumentError, match="budget must be finite"):
        perturb_along(p, d, math.nan)
    with pytest.raises(InvalidTypeError, match="budget must be a real number"):
        perturb_along(p, d, "0.1")
    with pytest.raises(
        InvalidArgumentError, match=r"directions must have the shape of probs \(1, 3\)"
    ):
        perturb_along(p, d[:, :2], 0.1)
    with pytest.raises(InvalidTypeError, match=r"directions must be a torch\.Tensor"):
        perturb_along(p, [[0.0, 1.0, -1.0]], 0.1)
    with pytest.raises(InvalidArgumentError, match="directions must be finite"):
        perturb_along(p, torch.tensor([[0.0, math.inf, -1.0]]), 0.1)
    with pytest.raises(InvalidArgumentError, match=r"margin must be >= 0\.0, got -0\.1"):
        perturb_along(p, d, 0.1, margin=-0.1)
    with pytest.raises(InvalidTypeError, match="both_signs must be True or False, got 1"):
        perturb_along(p, d, 0.1, both_signs=1)
    with pytest.raises(InvalidArgumentError, match="probs must have rows summing to one"):
        perturb_along(p * 2, d, 0.1)
