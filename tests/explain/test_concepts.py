"""Concept shifts: switched-on/off concepts from their definition, heatmaps from CRP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.attacks.fgsm import FGSM
from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.concepts import concept_shift, fisher_concept_shift
from vulnscope.explain.crp import concept_relevance, crp


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    ).eval()


def test_switched_concepts_follow_their_definition() -> None:
    model = _mlp()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    shift = concept_shift(model, x, y, layers=["2", "4"], attack=FGSM(eps=0.3), top=2)
    new = model(shift.perturbed).argmax(1)
    assert torch.equal(shift.new_labels, new)
    layer = shift.layers[1]
    assert layer.layer == "4" and layer.switched_on.shape == (4, 2)
    torch.testing.assert_close(
        layer.new_perturbed, concept_relevance(model, shift.perturbed, new, layer="4")
    )
    gain = layer.new_perturbed - layer.new_clean
    loss = layer.true_clean - layer.true_perturbed
    for i in range(4):
        assert set(layer.switched_on[i].tolist()) == set(gain[i].topk(2).indices.tolist())
        assert set(layer.switched_off[i].tolist()) == set(loss[i].topk(2).indices.tolist())
        expected = crp(model, shift.perturbed[i : i + 1], new[i : i + 1], layer="4",
                       concepts=layer.switched_on[i].tolist())  # fmt: skip
        torch.testing.assert_close(layer.heatmap[i : i + 1], expected)


def test_fisher_direction_and_bad_input() -> None:
    model = _mlp()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    shift = fisher_concept_shift(model, x, y, layers=["2"], step=0.5, top=1)
    assert shift.perturbed.shape == x.shape
    assert float((shift.perturbed - x).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    with pytest.raises(InvalidArgumentError, match="exactly one of perturbed"):
        concept_shift(model, x, y, layers=["2"])
    with pytest.raises(InvalidArgumentError, match=r"one of \['0', '1', '2'"):
        concept_shift(model, x, y, layers=["fc"], perturbed=x)
