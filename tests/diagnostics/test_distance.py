"""The line search for a class change, against the closed-form crossing of a hyperplane."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vulnscope.diagnostics import line_search_class_change, model_classifier
from vulnscope.errors import InvalidArgumentError


def _halfspace(w: torch.Tensor, b: float):
    """Class 1 where wᵀx > b, else 0, written directly (no model)."""

    def classify(points: torch.Tensor) -> torch.Tensor:
        return (points @ w > b).long()

    return classify


def _problem(seed: int = 0, batch: int = 4, directions: int = 3, n: int = 5):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=generator, dtype=torch.float64)
    b = 0.7
    x = torch.randn(batch, n, generator=generator, dtype=torch.float64)
    d = torch.randn(batch, directions, n, generator=generator, dtype=torch.float64)
    # point every direction towards the boundary, so that each one crosses it
    side = torch.sign(b - x @ w)  # +1 below the boundary
    d = d * torch.sign((d @ w) * side[:, None])[..., None]
    exact = (b - x @ w)[:, None] / (d @ w)  # > 0: the closed-form crossing
    return w, b, x, d, exact


@pytest.mark.parametrize(("steps", "refine"), [(24, 8), (10, 0), (5, 12)])
def test_step_is_the_closed_form_crossing_to_the_resolution(steps, refine):
    w, b, x, d, exact = _problem()
    assert (exact > 0).all()
    max_step = 1.2 * float(exact.max())
    found = line_search_class_change(
        _halfspace(w, b), x, d, max_step=max_step, steps=steps, refine=refine
    )
    resolution = max_step / steps / 2**refine
    assert found.shape == exact.shape and found.dtype == torch.float64
    assert (found >= exact - 1e-12).all()  # the class has changed at the step returned
    assert (found <= exact + resolution * (1 + 1e-9)).all()
    # and the returned point really is on the other side
    points = x[:, None, :] + found[..., None] * d
    assert torch.equal(
        _halfspace(w, b)(points.reshape(-1, 5)).reshape(found.shape) == 1,
        (x @ w <= b)[:, None].expand_as(found),
    )


def test_step_through_a_model_classifier():
    w, b, x, d, exact = _problem(seed=1)
    linear = nn.Linear(5, 2).double()
    with torch.no_grad():
        linear.weight.copy_(torch.stack([torch.zeros(5, dtype=torch.float64), w]))
        linear.bias.copy_(torch.tensor([0.0, -b], dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), linear).eval()
    classify = model_classifier(model, (1, 5))  # the model sees (P, 1, 5)
    assert torch.equal(classify(x), (x @ w > b).long())
    max_step = 1.1 * float(exact.max())
    found = line_search_class_change(classify, x, d, max_step=max_step, batch_points=5)
    resolution = max_step / 24 / 2**8
    assert (found >= exact - 1e-12).all() and (found <= exact + resolution * (1 + 1e-9)).all()


def test_unreachable_and_parallel_directions_give_inf():
    w, b, x, d, exact = _problem(seed=2, batch=3, directions=2)
    d = d.clone()
    # direction 1 of sample 0: parallel to the boundary (orthogonal to w)
    d[0, 1] = d[0, 1] - (d[0, 1] @ w) / (w @ w) * w
    # direction 1 of sample 1: pointing away from the boundary
    d[1, 1] = -d[1, 1]
    exact = (b - x @ w)[:, None] / (d @ w)
    max_step = 0.5 * (float(exact[0, 0]) + float(exact[2, 0]))
    found = line_search_class_change(_halfspace(w, b), x, d, max_step=max_step)
    assert math.isinf(found[0, 1]) and math.isinf(found[1, 1])
    for n, k in [(0, 0), (1, 0), (2, 0), (2, 1)]:
        if exact[n, k] > max_step:  # beyond the search
            assert math.isinf(found[n, k])
        else:
            assert exact[n, k] <= found[n, k] <= exact[n, k] + max_step / 24 / 2**8 + 1e-12
    assert torch.isinf(found).sum() >= 3  # at least one crossing lies beyond max_step
    assert torch.isfinite(found).any()


def test_bounds_clip_every_point():
    # class 1 where x_1 + x_2 > 1.8, inside the box [0, 1]²
    classify = _halfspace(torch.tensor([1.0, 1.0], dtype=torch.float64), 1.8)
    x = torch.tensor([[0.9, 0.1]], dtype=torch.float64)
    diagonal = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64) / math.sqrt(2)
    free = line_search_class_change(classify, x, diagonal, max_step=2.0)
    clipped = line_search_class_change(classify, x, diagonal, max_step=2.0, bounds=(0.0, 1.0))
    resolution = 2.0 / 24 / 2**8
    # unclipped: 1 + √2 t > 1.8; clipped: x_1 stops at 1, so 0.1 + t/√2 > 0.8
    assert 0.4 * math.sqrt(2) <= float(free) <= 0.4 * math.sqrt(2) + resolution
    assert 0.7 * math.sqrt(2) <= float(clipped) <= 0.7 * math.sqrt(2) + resolution


def test_bounds_that_prevent_the_change_give_inf():
    classify = _halfspace(torch.tensor([1.0, 0.0], dtype=torch.float64), 1.5)
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    along = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    free = line_search_class_change(classify, x, along, max_step=3.0)
    assert 1.0 <= float(free) <= 1.0 + 3.0 / 24 / 2**8
    clipped = line_search_class_change(classify, x, along, max_step=3.0, bounds=(0.0, 1.0))
    assert math.isinf(clipped)


def test_shape_errors():
    classify = _halfspace(torch.ones(3, dtype=torch.float64), 0.0)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="x must be flat"):
        line_search_class_change(classify, x[:, None], torch.ones(2, 1, 3), max_step=1.0)
    for bad in [torch.ones(2, 3), torch.ones(3, 1, 3), torch.ones(2, 1, 4)]:
        with pytest.raises(InvalidArgumentError, match="directions"):
            line_search_class_change(classify, x, bad, max_step=1.0)
    with pytest.raises(InvalidArgumentError, match="max_step"):
        line_search_class_change(classify, x, torch.ones(2, 1, 3), max_step=0.0)
    with pytest.raises(InvalidArgumentError, match="refine"):
        line_search_class_change(classify, x, torch.ones(2, 1, 3), max_step=1.0, refine=-1)
