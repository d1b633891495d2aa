"""Decision-boundary sections against the model evaluated at explicitly built points, and
against the closed form of a linear two-class model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.diagnostics import decision_boundary_section
from vulnscope.errors import InvalidArgumentError

SHAPE = (1, 2, 3)


def _problem(seed: int = 0, n: int = 3):
    model = tiny_classifier(seed, SHAPE, classes=4)
    x = random_inputs(seed, n, SHAPE, (0.0, 1.0))
    generator = torch.Generator().manual_seed(seed + 100)
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return model, x, direction


def _margin(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Logit of ``reference`` minus the best other logit, by sorting."""
    mine = logits.gather(-1, reference[..., None])[..., 0]
    top2 = logits.topk(2, dim=-1).values
    other = torch.where(top2[..., 0] == mine, top2[..., 1], top2[..., 0])
    return mine - other


def test_shapes_and_offsets():
    model, x, direction = _problem()
    section = decision_boundary_section(model, x, direction, radius=1.5, resolution=7)
    assert section.offsets.shape == (7,) and section.offsets.dtype == torch.float64
    torch.testing.assert_close(section.offsets, torch.linspace(-1.5, 1.5, 7, dtype=torch.float64))
    assert section.classes.shape == (3, 7, 7) and section.classes.dtype == torch.int64
    assert section.margins.shape == (3, 7, 7) and section.margins.dtype == torch.float64
    assert section.reference.shape == (3,)
    assert section.directions.shape == (3, 2, *SHAPE)


def test_centre_is_x_with_its_class_and_logit_margin():
    model, x, direction = _problem(seed=1)
    section = decision_boundary_section(model, x, direction, radius=2.0, resolution=9)
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    assert torch.equal(section.reference, predicted)
    assert float(section.offsets[4]) == pytest.approx(0.0, abs=1e-15)
    assert torch.equal(section.classes[:, 4, 4], predicted)
    torch.testing.assert_close(section.margins[:, 4, 4], _margin(logits, predicted))
    assert (section.margins[:, 4, 4] > 0).all()


def test_grid_points_are_the_model_at_explicitly_built_points():
    model, x, direction = _problem(seed=2)
    section = decision_boundary_section(model, x, direction, radius=3.0, resolution=6)
    d1, d2 = section.directions[:, 0], section.directions[:, 1]
    for n, i, j in [(0, 0, 0), (0, 5, 2), (1, 3, 5), (2, 1, 4), (2, 5, 5), (1, 2, 0)]:
        a, b = float(section.offsets[j]), float(section.offsets[i])
        point = x[n] + a * d1[n] + b * d2[n]
        with torch.no_grad():
            logits = model(point[None])[0]
        assert int(section.classes[n, i, j]) == int(logits.argmax())
        expected = _margin(logits, section.reference[n])
        torch.testing.assert_close(section.margins[n, i, j], expected)


def test_directions_are_orthonormal_and_the_first_is_the_given_one():
    model, x, direction = _problem(seed=3)
    section = decision_boundary_section(model, x, 7.0 * direction, resolution=3)
    flat = section.directions.flatten(2)  # (N, 2, n)
    gram = flat @ flat.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(2, dtype=torch.float64).expand(3, -1, -1))
    unit = direction.flatten(1) / direction.flatten(1).norm(dim=1, keepdim=True)
    torch.testing.assert_close(flat[:, 0], unit)


def test_margin_sign_agrees_with_the_class():
    model, x, direction = _problem(seed=4, n=4)
    section = decision_boundary_section(model, x, direction, radius=4.0, resolution=15)
    same = section.classes == section.reference[:, None, None]
    assert torch.equal(section.margins > 0, same)
    # the section is wide enough to cross a boundary somewhere, so both signs occur
    assert same.any() and (~same).any()


def test_linear_two_class_model_has_an_affine_margin_and_a_straight_boundary():
    generator = torch.Generator().manual_seed(6)
    model = nn.Linear(5, 2).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 5, generator=generator, dtype=torch.float64))
        model.bias.copy_(torch.randn(2, generator=generator, dtype=torch.float64))
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    direction = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    # sample 0 looks straight across the boundary: its margin cannot depend on the random axis
    w = model.weight.detach()
    direction[0] = w[1] - w[0]
    section = decision_boundary_section(model, x, direction, radius=3.0, resolution=11)

    with torch.no_grad():
        reference = model(x).argmax(1)
    sign = torch.where(reference == 1, 1.0, -1.0).to(torch.float64)
    normal = sign[:, None] * (w[1] - w[0])  # gradient of the reference margin
    offset = sign * (model.bias.detach()[1] - model.bias.detach()[0])
    d1, d2 = section.directions[:, 0], section.directions[:, 1]
    centre = (x * normal).sum(1) + offset
    along = (d1 * normal).sum(1)
    across = (d2 * normal).sum(1)
    a = section.offsets[None, None, :]
    b = section.offsets[None, :, None]
    expected = centre[:, None, None] + a * along[:, None, None] + b * across[:, None, None]
    torch.testing.assert_close(section.margins, expected, rtol=1e-12, atol=1e-12)
    # the boundary is the line centre + a·along + b·across = 0
    other = 1 - reference
    expected_classes = torch.where(expected > 0, reference[:, None, None], other[:, None, None])
    assert torch.equal(section.classes, expected_classes)
    torch.testing.assert_close(along[0], (w[1] - w[0]).norm() * sign[0])
    torch.testing.assert_close(section.margins[0], section.margins[0, :1].expand(11, -1))


def test_zero_direction_is_rejected():
    model, x, direction = _problem()
    direction[1] = 0.0
    with pytest.raises(InvalidArgumentError, match="non-zero"):
        decision_boundary_section(model, x, direction)


def test_direction_of_the_wrong_shape_is_rejected():
    model, x, _ = _problem()
    with pytest.raises(InvalidArgumentError, match="direction"):
        decision_boundary_section(model, x, torch.ones(3, 6, dtype=torch.float64))


@pytest.mark.parametrize("resolution", [1, 0])
def test_resolution_below_two_is_rejected(resolution):
    model, x, direction = _problem()
    with pytest.raises(InvalidArgumentError, match="resolution"):
        decision_boundary_section(model, x, direction, resolution=resolution)


def test_radius_must_be_positive():
    model, x, direction = _problem()
    with pytest.raises(InvalidArgumentError, match="radius"):
        decision_boundary_section(model, x, direction, radius=0.0)


def test_same_seed_gives_the_same_section():
    model, x, direction = _problem(seed=5)
    first = decision_boundary_section(model, x, direction, resolution=5, seed=3, batch_points=7)
    second = decision_boundary_section(model, x, direction, resolution=5, seed=3)
    assert torch.equal(first.directions, second.directions)
    assert torch.equal(first.classes, second.classes)
    torch.testing.assert_close(first.margins, second.margins, rtol=1e-12, atol=1e-12)
    other = decision_boundary_section(model, x, direction, resolution=5, seed=4)
    assert not torch.equal(first.directions[:, 1], other.directions[:, 1])
    assert torch.equal(first.directions[:, 0], other.directions[:, 0])
