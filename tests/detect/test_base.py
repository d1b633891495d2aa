"""The detector contract on a detector small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from vulnscope.detect.base import DETECTOR_FORMAT, Detector, load_detector, save_detector
from vulnscope.errors import DataError, InvalidArgumentError, ModelError


class Brightness(Detector):
    """Scores an input by the distance of its mean from the clean data's (a buffer)."""

    name = "brightness"
    paper = "none: a test double"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.register_buffer("centre", torch.zeros(()))

    def fit_parts(self, model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        self.centre.fill_(float(x.mean()))

    def raw_score(self, model, x: Tensor) -> Tensor:
        return self.scale * (x.flatten(1).mean(1) - self.centre).abs()


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_threshold_flags_the_requested_share_and_the_file_round_trips(tmp_path):
    model = _model()
    x = torch.rand(40, 1, 4, 4)
    detector = Brightness(scale=2.0).fit(model, x, torch.zeros(40, dtype=torch.long))
    assert detector.centre == x.mean() and detector.input_shape == (1, 4, 4)
    held_out = torch.rand(100, 1, 4, 4)
    detector.threshold_at(0.1, held_out)
    assert int(detector.flags(held_out).sum()) == 10  # the top tenth, strictly above
    path = save_detector(detector, tmp_path / "d.safetensors")
    again = load_detector(path, model, registry={"brightness": Brightness})
    assert again.scale == 2.0 and again.threshold == detector.threshold
    assert torch.equal(again.score(held_out), detector.score(held_out))


def test_bad_use_gets_one_clear_error_each(tmp_path):
    model = _model()
    detector = Brightness().fit(model, torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="needs at least 20 clean inputs, got 19"):
        detector.threshold_at(0.05, torch.rand(19, 1, 4, 4))
    with pytest.raises(InvalidArgumentError, match="has no threshold"):
        detector.flags(torch.rand(2, 1, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"shaped \(N, 1, 4, 4\)"):
        detector.score(torch.rand(2, 1, 5, 5))
    detector.threshold_at(0.5, torch.rand(4, 1, 4, 4))
    path = save_detector(detector, tmp_path / "d.safetensors")
    with pytest.raises(ModelError, match="fitted on another model"):
        load_detector(path, _model(seed=1), registry={"brightness": Brightness})
    with pytest.raises(DataError, match="unknown detector 'brightness'"):
        load_detector(path, model, registry={})
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
    header["format"] = str(DETECTOR_FORMAT + 1)
    save_file(load_file(path), tmp_path / "future.safetensors", metadata=header)
    with pytest.raises(DataError, match="of format '2'; this vulnscope reads format 1"):
        load_detector(tmp_path / "future.safetensors", model, registry={"brightness": Brightness})
    assert math.isnan(Brightness().threshold)
