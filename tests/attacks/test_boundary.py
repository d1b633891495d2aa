"""The geometry under DeepFool and FAB, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linprog, minimize

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks.boundary import (
    boundary_distances,
    hyperplane_box_step,
    linearise,
    linearise_target,
    step_onto,
)
from vulnscope.attacks.counting import CountingModel

ORDER = {"linf": np.inf, "l2": 2, "l1": 1}


def _reference_minimum(w, r, low, high, norm):
    """min |d|_p s.t. w.d = r, low <= d <= high, by an LP (L∞, L1) or SLSQP (L2)."""
    dim = w.size
    if norm == "l2":
        solution = minimize(
            lambda d: d @ d,
            np.zeros(dim),
            jac=lambda d: 2 * d,
            method="SLSQP",
            bounds=list(zip(low, high, strict=True)),
            options={"ftol": 1e-15, "maxiter": 500},
            constraints=[{"type": "eq", "fun": lambda d: w @ d - r, "jac": lambda d: w}],
        )
        return np.sqrt(solution.fun)
    # Variables (d, s): minimise t (L∞: one s >= |d_i|) or sum s_i (L1: s_i >= |d_i|).
    slack = 1 if norm == "linf" else dim
    spread = np.ones((dim, 1)) if norm == "linf" else np.eye(dim)
    cost = np.r_[np.zeros(dim), np.ones(slack)]
    upper = np.r_[np.c_[np.eye(dim), -spread], np.c_[-np.eye(dim), -spread]]
    solution = linprog(
        cost,
        A_ub=upper,
        b_ub=np.zeros(2 * dim),
        A_eq=np.r_[w, np.zeros(slack)][None],
        b_eq=[r],
        bounds=list(zip(low, high, strict=True)) + [(0, None)] * slack,
    )
    assert solution.status == 0
    return solution.fun


@st.composite
def _instances(draw):
    dim = draw(st.integers(1, 6))
    values = st.floats(-2.0, 2.0, allow_nan=False)
    w = np.array(draw(st.lists(values, min_size=dim, max_size=dim)))
    w[np.abs(w) < 1e-3] = 0.0
    low = -np.abs(draw(st.lists(values, min_size=dim, max_size=dim)))
    high = np.abs(draw(st.lists(values, min_size=dim, max_size=dim)))
    r = draw(st.floats(-3.0, 3.0, allow_nan=False))
    return w, r, low, high


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@given(instance=_instances())
def test_hyperplane_box_step_is_the_exact_minimal_step(norm, instance):
    w, r, low, high = instance
    as_row = lambda a: torch.tensor(a, dtype=torch.float64)[None]  # noqa: E731
    d = hyperplane_box_step(
        as_row(w), torch.tensor([r], dtype=torch.float64), as_row(low), as_row(high), norm
    )[0].numpy()
    assert (d >= low - 1e-12).all() and (d <= high + 1e-12).all()
    # The most the box can move w.d towards r; beyond it the step goes to that corner.
    reach = np.maximum(w * low * np.sign(r), w * high * np.sign(r)).sum()
    if abs(r) > reach * (1 + 1e-9) + 1e-12:
        assert w @ d * np.sign(r) == pytest.approx(reach, rel=1e-9, abs=1e-12)
        return
    assert w @ d == pytest.approx(r, rel=1e-9, abs=1e-9)
    size = np.linalg.norm(d, ord=ORDER[norm])
    assert size <= _reference_minimum(w, r, low, high, norm) + 1e-6


def test_hyperplane_box_step_uses_the_box_when_it_must():
    w = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    low, high = torch.tensor([[-1.0, -1.0]]).double(), torch.tensor([[0.25, 5.0]]).double()
    r = torch.tensor([1.0], dtype=torch.float64)
    # Unconstrained: (0.5, 0.5) in L∞ and L2; the box stops the first at 0.25.
    expected = {"linf": [0.25, 0.75], "l2": [0.25, 0.75], "l1": [0.25, 0.75]}
    for norm, value in expected.items():
        step = hyperplane_box_step(w, r, low, high, norm)
        torch.testing.assert_close(step, torch.tensor([value], dtype=torch.float64))


def test_linearise_matches_autograd_and_counts_one_backward_per_class():
    model = tiny_classifier(0, (1, 2, 3), classes=5)
    x = random_inputs(0, 3, (1, 2, 3), (0.0, 1.0))
    up, down = torch.tensor([[1, 2], [0, 4], [3, 1]]), torch.tensor([0, 2, 4])
    counting = CountingModel(model)
    gaps, grads = linearise(counting, x, up, down)
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v).sum(0), x).flatten(2)
    with torch.no_grad():
        logits = model(x)
    for i in range(3):
        for k in range(2):
            assert gaps[i, k] == pytest.approx(float(logits[i, up[i, k]] - logits[i, down[i]]))
            expected = jacobian[up[i, k], i] - jacobian[down[i], i]
            torch.testing.assert_close(grads[i, k], expected)
    assert (counting.forward_evals, counting.gradient_evals) == (3, 6)


def test_linearise_target_takes_the_strongest_rival_or_blends_the_near_ones():
    model = tiny_classifier(1, (1, 2, 3), classes=5)
    x = random_inputs(1, 4, (1, 2, 3), (0.0, 1.0))
    logits = model(x)
    target = logits.argsort(1)[:, 0]  # the least likely class: far from its region
    rival = logits.scatter(1, target[:, None], float("-inf")).argmax(1)
    counting = CountingModel(model)
    hard_gap, hard_grad = linearise_target(counting, x, target)
    reference_gap, reference_grad = linearise(CountingModel(model), x, target[:, None], rival)
    torch.testing.assert_close(hard_gap, reference_gap)
    torch.testing.assert_close(hard_grad, reference_grad)
    assert counting.gradient_evals == 4
    smooth = torch.tensor([True, False, True, False])
    gap, grad = linearise_target(CountingModel(model), x, target, smooth=smooth)
    assert (gap[smooth] < hard_gap[smooth]).all()  # the smooth maximum exceeds the max
    assert (gap[smooth] >= hard_gap[smooth] * (1 + np.log(4))).all()  # by at most tau log(C-1)
    torch.testing.assert_close(gap[~smooth], hard_gap[~smooth])
    torch.testing.assert_close(grad[~smooth], hard_grad[~smooth])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_step_onto_lands_on_the_hyperplane_at_the_linearised_distance(norm):
    generator = torch.Generator().manual_seed(2)
    gap = -torch.rand(5, generator=generator, dtype=torch.float64)
    grad = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    step = step_onto(gap, grad, norm)
    torch.testing.assert_close(gap + (grad * step).sum(1), torch.zeros_like(gap))
    distance = boundary_distances(gap[:, None], grad[:, None], norm)[:, 0]
    torch.testing.assert_close(torch.linalg.vector_norm(step, ord=ORDER[norm], dim=1), distance)
    beyond = step_onto(gap, grad, norm, beyond=torch.full_like(gap, 0.1))
    torch.testing.assert_close(
        torch.linalg.vector_norm(beyond, ord=ORDER[norm], dim=1), distance + 0.1
    )
