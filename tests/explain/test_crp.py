"""CRP against plain LRP (all concepts; a partition of them), the atlas against brute force."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.crp import concept_atlas, concept_relevance, crp
from vulnscope.explain.lrp import lrp, lrp_layers


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 3, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(3, 4, 3, padding=1),
                relu2=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                logits=nn.Linear(36, 3),
            )
        )
        .double()
        .eval()
    )


def _inputs(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_all_concepts_is_lrp_and_a_partition_sums_to_it() -> None:
    model, x = _cnn(), _inputs()
    y = torch.tensor([0, 1, 2, 0, 1])
    plain = lrp(model, x, y)
    torch.testing.assert_close(crp(model, x, y, layer="conv2", concepts=range(4)), plain)
    parts = sum(crp(model, x, y, layer="relu1", concepts=[c]) for c in range(3))
    torch.testing.assert_close(parts, plain)
    per_input = torch.tensor([[0, 1], [2, 3], [0, 3], [1, 2], [0, 2]])
    expected = torch.stack([
        crp(model, x[i : i + 1], y[i : i + 1], layer="conv2", concepts=per_input[i].tolist())[0]
        for i in range(5)
    ])  # fmt: skip
    torch.testing.assert_close(crp(model, x, y, layer="conv2", concepts=per_input), expected)


def test_concept_relevance_sums_to_the_layers_relevance() -> None:
    model, x = _cnn(), _inputs()
    relevance = concept_relevance(model, x, 2, layer="conv2")
    assert relevance.shape == (5, 4)
    layers = lrp_layers(model, x, 2)
    torch.testing.assert_close(relevance.sum(1), layers.sums[:, layers.names.index("conv2")])
    # a concept's relevance is what its CRP heatmap puts at the input, up to what the
    # biases below absorb; below relu1 is only conv1, whose zᴮ rule has no bias term
    relevance = concept_relevance(model, x, 2, layer="relu1")
    heatmap = crp(model, x, 2, layer="relu1", concepts=[1])
    torch.testing.assert_close(heatmap.sum((1, 2, 3)), relevance[:, 1])


def test_atlas_ranks_inputs_by_relevance_and_activation() -> None:
    model, x = _cnn(), _inputs(8)
    atlas = concept_atlas(model, x, layer="relu2", top=3)
    assert atlas.relevance_top.shape == (4, 3) and atlas.activation_top.shape == (4, 3)
    predicted = model(x).argmax(1)
    for channel in range(4):
        scores = concept_relevance(model, x, predicted, layer="relu2")[:, channel]
        assert set(atlas.relevance_top[channel].tolist()) == set(scores.topk(3).indices.tolist())
        activation = model[:4](x)[:, channel].amax((1, 2))
        assert set(atlas.activation_top[channel].tolist()) == set(
            activation.topk(3).indices.tolist()
        )


def test_bad_layer_and_concepts() -> None:
    model, x = _cnn(), _inputs()
    with pytest.raises(InvalidArgumentError, match=r"one of \['conv1', 'relu1', 'conv2'"):
        crp(model, x, 0, layer="conv3", concepts=[0])
    with pytest.raises(InvalidArgumentError, match=r"channels in \[0, 3\].*\[0, 4\]"):
        crp(model, x, 0, layer="conv2", concepts=[0, 4])
    with pytest.raises(InvalidArgumentError, match="at least top = 9"):
        concept_atlas(model, x, layer="conv2", top=9)
