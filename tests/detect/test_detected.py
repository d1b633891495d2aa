"""A classifier and its detector in one TorchScript file, read back for the audit."""

from __future__ import annotations

import pytest
import torch
from test_base import Brightness
from torch import nn

from vulnscope.detect.detected import Detected, load_detected, save_detected
from vulnscope.detect.registry import DETECTORS
from vulnscope.errors import ModelError
from vulnscope.models.loading import load_model
from vulnscope.models.saving import save_torchscript


def test_the_model_file_carries_the_detector_and_the_classifier_alone_computes(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(DETECTORS, "brightness", Brightness)
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(30, 1, 4, 4)
    detector = Brightness(scale=3.0).fit(classifier, x, torch.zeros(30, dtype=torch.long))
    detector.threshold_at(0.1, x)
    path = save_detected(classifier, detector, tmp_path / "m.pt", metadata={"method": "b"})
    scripted = load_model(str(path))
    detected = load_detected(path, scripted)
    assert isinstance(detected, Detected)
    assert torch.equal(detected(x), classifier(x))  # the logits are the classifier's
    assert torch.equal(detected.detector.score(x), detector.score(x))
    assert detected.detector.threshold == detector.threshold
    # no detector weights: the (rebuilt) classifier's tensors are the scripted model's
    assert [q.data_ptr() for q in detected.parameters()] == [
        q.data_ptr() for q in scripted.parameters()
    ]
    plain = save_torchscript(classifier, tmp_path / "plain.pt")
    assert load_detected(plain, load_model(str(plain))) is None
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with pytest.raises(ModelError, match="fitted on another model"):
        save_detected(other, detector, tmp_path / "bad.pt", metadata={})


def test_defend_writes_the_reference_cnn_with_a_fitted_detector(tmp_path, digits_cnn, capsys):
    from vulnscope.cli import main

    out = tmp_path / "density.pt"
    assert main(["defend", "--method", "density", "--out", str(out)]) == 0
    assert "the detector flags" in capsys.readouterr().out
    detected = load_detected(out, load_model(str(out)))
    assert detected is not None and detected.detector.name == "density"
    assert detected.detector.threshold == detected.detector.threshold  # set, not NaN
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(detected(x), digits_cnn(x), atol=1e-6)  # the reference CNN
    assert main(["defend", "--method", "density", "--out", str(out)]) == 0  # kept
    assert "already holds this model" in capsys.readouterr().out
