from __future__ import annotations

import pytest
import torch

from vulnscope.audit import audit
from vulnscope.data import ImageData
from vulnscope.errors import ModelError
from vulnscope.evaluate import standard_evaluation


def test_audit_record_agrees_with_the_cascade(digits_cnn, digits_test):
    data = digits_test.take(50)
    record = audit(
        digits_cnn, data, model_name="cnn", epsilons=[0.0, 0.1], attacks=["apgd-ce", "square"]
    )
    clean = float((digits_cnn(data.x).argmax(1) == data.y).double().mean())
    assert record["clean_accuracy"] == pytest.approx(clean)
    assert record["robust_accuracy"]["accuracy"][0] == pytest.approx(clean)
    direct = standard_evaluation(digits_cnn, data.x, data.y, eps=0.1, attacks=["apgd-ce", "square"])
    assert record["robust_accuracy"]["accuracy"][1] == pytest.approx(direct.robust_accuracy)
    assert record["evaluations"][0] == direct.to_dict()
    assert set(record["timing"]["stages"]["0.1"]) == {"APGD-CE", "Square"}


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


def _validator():  # type: ignore[no-untyped-def]
    import jsonschema

    from vulnscope.audit import results_schema

    schema = results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_audit_records_validate_against_the_shipped_schema(digits_cnn, digits_test):
    import json

    from vulnscope.audit import SCHEMA_VERSION

    validator = _validator()
    for norm, epsilons in (("linf", [0.0, 0.05, 0.1]), ("l2", [0.5])):
        record = audit(digits_cnn, digits_test.take(30), model_name="<cnn>", norm=norm,
                       epsilons=epsilons, attacks=["apgd-ce", "fgsm"])  # fmt: skip
        record = json.loads(json.dumps(record))  # exactly what results.json holds
        assert record["schema_version"] == SCHEMA_VERSION
        assert sorted(validator.iter_errors(record), key=str) == []
    # a schema that accepts anything would let each of these through
    broken = [
        {k: v for k, v in record.items() if k != "clean_accuracy"},
        {**record, "schema_version": SCHEMA_VERSION + 1},
        {**record, "clean_accuracy": 1.5},
        {**record, "settings": {**record["settings"], "norm": "l3"}},
        {**record, "unexpected": 1},
        {**record, "evaluations": [{**record["evaluations"][0], "broken_by": {"APGD-CE": -1}}]},
        {**record, "created": "yesterday"},
    ]
    for bad in broken:
        assert list(validator.iter_errors(bad)), bad
