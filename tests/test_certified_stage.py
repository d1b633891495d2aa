"""The audit's ``certified`` stage: a sound lower side of robust accuracy, in the record.

Its certified accuracy is checked against independent references: the attacks of the
``linf`` and ``l2`` stages (a certified point is never broken, so certified ≤ attacked at
every budget) and the MILP's exact answer on the sample (a certified point is verified).
The frame's resume and sharding are the frame's tests (``test_toy_stage.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
import torch
from torch import nn

from vulnscope.audit import (
    audit,
    default_stages,
    registered_stages,
    render_report,
    results_schema,
)
from vulnscope.audit.stages.certified import Bracket, CertifiedResult
from vulnscope.audit.stages.certified_chunk import ALPHA_LIMIT, backward_work, choose_method
from vulnscope.certify.graph import read_graph
from vulnscope.data import load_digits
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import DigitsCNN, DigitsMLP


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks: one thread is faster, and two wait on each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_mlp() -> nn.Module:
    """A 64-16-10 ReLU network, trained for a moment on the digits (seeded)."""
    train = load_digits("train")
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    for layer in (model[1], model[3]):
        nn.init.normal_(layer.weight, std=0.2, generator=generator)
        nn.init.zeros_(layer.bias)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        optimiser.step()
    return model.eval()


def test_certified_accuracy_lies_under_the_attacks_and_the_milp(tiny_mlp, digits_test, tmp_path):
    data = digits_test.take(16)
    result = audit(
        tiny_mlp,
        data,
        model_name="tiny",
        stages=["linf", "l2", "certified"],
        epsilons={"linf": [0.0, 0.02, 0.05, 0.1], "l2": [0.5]},
        attacks=["apgd-ce"],
        batch_size=8,  # two pieces, merged
        geometry_samples=4,
    )
    record = result.to_dict()
    section = record["certified"]
    assert section["method"] == "alpha-crown" and section["samples"] == 16
    for norm, rows in section["brackets"].items():
        budgets = [eps for eps in record["robustness"][norm]["epsilons"] if eps > 0]
        assert [row["eps"] for row in rows] == budgets
        for row in rows:  # the attacks are an independent upper bound
            assert row["certified"] <= row["attacked"], (norm, row)
    assert section["brackets"]["linf"][0]["certified"] >= 0.5  # not vacuously 0
    exact = section["exact"]
    assert exact["samples"] == 16 and exact["epsilons"] == [0.02, 0.05, 0.1]
    for counts in exact["counts"]:  # the MILP decides exactly: it verifies every certified point
        assert counts["verified"] + counts["falsified"] + counts["unknown"] == 16
        assert counts["certified"] <= counts["verified"]
    assert sum(counts["falsified"] for counts in exact["counts"]) > 0

    validator = jsonschema.Draft202012Validator(results_schema())
    assert list(validator.iter_errors(json.loads(json.dumps(record)))) == []
    row = section["brackets"]["linf"][0]
    for bad in ({**row, "certified": 1.5}, {k: v for k, v in row.items() if k != "attacked"}):
        broken = {**section, "brackets": {**section["brackets"], "linf": [bad]}}
        assert list(validator.iter_errors({**record, "certified": broken}))

    page = render_report(result, tmp_path)  # the figure is test_audit.py's (its default audit)
    assert "<h2>Certified robustness</h2>" in page
    first = section["brackets"]["linf"][0]
    between = (
        f"robust accuracy is between {first['certified']:.1%} (certified, IBP + α-CROWN) and "
        f"{first['attacked']:.1%} (attacked)"
    )
    assert between in page
    assert "robust accuracy is between" in record["verdict"]["text"]


def test_a_model_certify_cannot_read_drops_only_this_stage(digits_test):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 10)).eval()
    record = audit(
        model,
        digits_test.take(8),
        model_name="gelu",
        stages=["linf", "certified"],
        epsilons={"linf": [0.05]},
        attacks=["fgsm"],
    ).to_dict()
    assert "certified" not in record and "linf" in record["robustness"]
    skipped = "the certified stage failed on this model and was skipped: certify cannot read"
    assert any(
        w.startswith(f"{skipped} this Sequential: ") and "GELU" in w for w in record["warnings"]
    ), record["warnings"]
    assert "certified" not in default_stages(lambda x: x.flatten(1))
    data = digits_test.take(2)
    with pytest.raises(InvalidArgumentError, match=r"'certified' needs an nn\.Module"):
        audit(lambda x: x.flatten(1)[:, :10], data, model_name="f", stages=["certified"])


def test_the_method_follows_the_work_of_a_backward_pass():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    # nodes: input 4, flatten 4, linear 3, relu 3, logits 2; the ReLU reads the linear
    # layer (3 neurons, 8 before it), and the logits (2 neurons, 14 before them)
    assert backward_work(read_graph(model, torch.rand(2, 1, 2, 2))) == 3 * 8 + 2 * 14
    x = torch.rand(2, 1, 8, 8)
    mlp = backward_work(read_graph(DigitsMLP().eval(), x))
    cnn = backward_work(read_graph(DigitsCNN().eval(), x))
    assert choose_method(mlp, 397, quick=False) == "alpha-crown"
    assert choose_method(cnn, 397, quick=False) == "crown"
    assert choose_method(mlp, 100, quick=True) == "crown"
    assert choose_method(cnn, 100, quick=True) == "ibp"
    assert choose_method(cnn, 10**6, quick=False) == "ibp"
    assert choose_method(ALPHA_LIMIT, 1, quick=False) == "alpha-crown"


def test_the_verdict_calls_a_bracket_of_at_most_five_points_tight():
    stage = registered_stages()["certified"]
    result = CertifiedResult(
        "crown",
        100,
        {
            "linf": [Bracket(0.05, 0.9, 0.95), Bracket(0.1, 0.85, 0.9), Bracket(0.2, 0.1, 0.5)],
            "l2": [Bracket(0.5, 0.2, 0.6)],
        },
        None,
    )
    linf, l2 = stage.verdict(result, 0.99).sentences
    assert linf.startswith(
        "At L∞ ε = 0.1, robust accuracy is between 85.0% (certified, IBP + CROWN) and 90.0% "
        "(attacked)."
    )
    assert "tight" in linf and "wide" in l2
    alone = CertifiedResult("ibp", 100, {"l2": [Bracket(0.5, 0.25, None)]}, None)
    (sentence,) = stage.verdict(alone, 0.99).sentences
    assert sentence == "At L2 ε = 0.5, 25.0% (certified, IBP) of the inputs are proved robust."
    summary = stage.summary(result)
    assert "  linf eps 0.2: between 10.0% (certified) and 50.0% (attacked)" in summary
