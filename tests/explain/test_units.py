"""unit_analysis: Szegedy et al.'s units against random directions, on networks built by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.explain.units import compare_directions, layer_activations, unit_analysis

CLASSES, PER_CLASS, SIGNAL = 10, 30, 3.0


def _orthogonal(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(CLASSES, CLASSES, generator=generator))
    return q


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``A (s e_y + noise)``: the classes lie along the columns of a rotation A."""
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    codes = SIGNAL * nn.functional.one_hot(y, CLASSES).float()
    codes += torch.randn(codes.shape, generator=generator)
    return codes @ _orthogonal(1).T, y


def _network(hidden_basis: torch.Tensor) -> nn.Sequential:
    """A hidden layer reading the class codes back in ``hidden_basis``, then the logits."""
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(CLASSES, CLASSES))
    model.add_module("logits", nn.Linear(CLASSES, CLASSES))
    with torch.no_grad():
        model.hidden.weight.copy_(hidden_basis @ _orthogonal(1).T)
        model.hidden.bias.zero_()
        model.logits.weight.copy_(hidden_basis.T)
        model.logits.bias.zero_()
    return model.eval()


def _compare(model: nn.Module) -> tuple[float, float, float]:
    data = _data()
    units = unit_analysis(model, data, layer="hidden", top=10, seed=0)
    random = unit_analysis(model, data, layer="hidden", directions="random", top=10, seed=1)
    difference = compare_directions(units, random, seed=2).purity
    return float(units.purity.mean()), difference.low, difference.high


def test_class_aligned_units_are_purer_than_random_directions() -> None:
    # Unit c of the hidden layer is s·[y = c] + noise: its top inputs are all of class c.
    # A random direction mixes the classes' codes, so its top inputs mix classes too.
    # (Measured: units 0.97, the difference's interval [0.39, 0.54].)
    purity, low, _ = _compare(_network(torch.eye(CLASSES)))
    assert purity > 0.9
    assert low > 0.3


def test_rotated_units_are_not_special() -> None:
    # The same network with its hidden basis rotated: units are then directions like any.
    # (Measured: the difference's interval [-0.02, 0.28], around zero.)
    _, low, _ = _compare(_network(_orthogonal(7)))
    assert low < 0.1


def test_scores_against_a_direct_computation() -> None:
    x, y = _data()
    model = _network(torch.eye(CLASSES))
    analysis = unit_analysis(model, (x, y), layer="hidden", top=5, seed=0)
    activations = layer_activations(model, x, "hidden")
    for unit in (0, 3):
        top = activations[:, unit].argsort(descending=True)[:5]
        assert torch.equal(analysis.top_indices[unit], top)
        centred = (x.double() - x.double().mean(0))[top]
        cosine = nn.functional.cosine_similarity(centred[:, None], centred[None], dim=2)
        expected = (cosine.sum() - cosine.diagonal().sum()) / (5 * 4)
        assert float(analysis.coherence[unit]) == pytest.approx(float(expected), abs=1e-10)
    # Random 5-subsets of ten equal classes: the expected purity is well below 1.
    assert 0.2 < analysis.baseline_purity < 0.4


def test_convolutional_layers_are_read_by_channel() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(8, 1, 5, 5)
    model(x)
    analysis = unit_analysis(model, (x, torch.zeros(8, dtype=torch.long)), layer="0", top=2)
    assert analysis.vectors.shape == (3, 3)
    assert torch.equal(analysis.purity, torch.ones(3, dtype=torch.float64))


def test_bad_inputs() -> None:
    model, data = _network(torch.eye(CLASSES)), _data()
    with pytest.raises(
        InvalidArgumentError, match=r"layer must name.*'nope'.*\['hidden', 'logits'\]"
    ):
        unit_analysis(model, data, layer="nope")
    with pytest.raises(InvalidArgumentError, match="directions must be one of"):
        unit_analysis(model, data, layer="hidden", directions="axes")
    with pytest.raises(InvalidArgumentError, match="top must be at most the 300 inputs"):
        unit_analysis(model, data, layer="hidden", top=301)
    with pytest.raises(InvalidArgumentError, match="count applies to directions='random'"):
        unit_analysis(model, data, layer="hidden", count=3)
    with pytest.raises(InvalidTypeError, match="data must be an ImageData"):
        unit_analysis(model, data[0], layer="hidden")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="labels must be integers"):
        unit_analysis(model, (data[0], data[1].float()), layer="hidden")
