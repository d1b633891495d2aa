"""The concept atlas figure: a PNG is written; a bad concept or top is refused by name."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.crp import concept_atlas
from vulnscope.explain.plots import plot_concept_atlas


def _atlas() -> tuple[object, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 3, 3, padding=1),
            relu=nn.ReLU(),
            flatten=nn.Flatten(),
            logits=nn.Linear(3 * 16, 2),
        )
    ).eval()
    data = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    return concept_atlas(model, data, layer="conv", top=3), data


def test_writes_a_png(tmp_path: Path) -> None:
    atlas, data = _atlas()
    path = plot_concept_atlas(atlas, data, tmp_path / "atlas.png", concepts=[2, 0], top=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_concept_top_and_data(tmp_path: Path) -> None:
    atlas, data = _atlas()
    with pytest.raises(InvalidArgumentError, match=r"concepts must be .* in \[0, 2\].*\[3\]"):
        plot_concept_atlas(atlas, data, tmp_path / "a.png", concepts=[3])
    with pytest.raises(InvalidArgumentError, match="top must be at most the atlas's k = 3"):
        plot_concept_atlas(atlas, data, tmp_path / "a.png", top=4)
    with pytest.raises(InvalidArgumentError, match="data must be the atlas's 6 images"):
        plot_concept_atlas(atlas, data[:5], tmp_path / "a.png")
