from __future__ import annotations

import pytest
import torch

from vulnscope.audit import audit, audit_attacks
from vulnscope.data import ImageData
from vulnscope.errors import ModelError


def test_two_class_models_skip_dlr():
    assert "APGD-DLR" not in audit_attacks(norm="linf", seed=0, num_classes=2)
    assert "APGD-DLR" in audit_attacks(norm="linf", seed=0, num_classes=3)


def test_audit_record_agrees_with_its_curves(digits_cnn, digits_test):
    record = audit(digits_cnn, digits_test.take(50), model_name="cnn", epsilons=[0.1])
    assert record["clean_accuracy"] == pytest.approx(
        float((digits_cnn(digits_test.x[:50]).argmax(1) == digits_test.y[:50]).double().mean())
    )
    assert record["worst_case"]["robust_accuracy"][0] <= min(
        curve["robust_accuracy"][0] for curve in record["robust_accuracy"].values()
    )


def test_model_with_too_few_outputs_is_refused():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 3]), 4, "test")
    with pytest.raises(ModelError, match="the model has 3 outputs but the data has 4 classes"):
        audit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), data, model_name="m")


def test_model_returning_a_vector_is_refused():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 2, "test")
    with pytest.raises(
        ModelError, match=r"the model must return logits of shape \(N, C\) = \(1, C\)"
    ):
        audit(lambda x: x.flatten(1).sum(1), data, model_name="m")
