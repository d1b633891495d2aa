"""The ``explain`` stage: its record is what LRP, the concept shifts and the flow give."""

from __future__ import annotations

import torch
from torch import nn

import vulnscope.audit.stages.explain as explain_stage
from vulnscope.attacks import DeepFool
from vulnscope.audit import audit
from vulnscope.audit.settings import default_stages
from vulnscope.explain import lrp, train_flow


def test_the_record_is_what_lrp_gives_on_the_sample_s_adversarial_examples(
    digits_cnn, digits_test, tmp_path, monkeypatch
):
    data = digits_test.take(6)  # geometry sample = every point; quick explains 4
    flow = train_flow(digits_test.x[:64], epochs=1, couplings=2, hidden=16, seed=0)
    monkeypatch.setattr(explain_stage, "cached_flow", lambda: flow)
    result = audit(digits_cnn, data, model_name="cnn", stages=["explain"], quick=True, out=tmp_path)
    section = result.results["explain"]
    x, y = data.x[:4], data.y[:4]
    assert bool((digits_cnn(x).argmax(1) == y).all())  # the four explained points
    found = DeepFool(norm="l2", overshoot=0.02, steps=50)(digits_cnn, x, y)
    assert section.points == int(found.success.sum()) == 4
    new = digits_cnn(found.x_adv).argmax(1)
    cosine = nn.functional.cosine_similarity(
        lrp(digits_cnn, x, y).flatten(1), lrp(digits_cnn, found.x_adv, new).flatten(1)
    )
    assert abs(section.map_cosine_median - float(cosine.median())) < 1e-5
    assert [change.layer for change in section.layers] == ["conv1", "conv2", "fc"]
    assert [change.concepts for change in section.layers] == [16, 32, 128]
    assert section.counterfactual is not None and 0.0 <= section.counterfactual.reached <= 1.0
    with torch.no_grad():
        likelihood = flow.log_prob(found.x_adv)
    assert (
        abs(section.counterfactual.adversarial_log_prob_median - float(likelihood.median())) < 1e-3
    )
    assert (tmp_path / "explain.png").is_file()
    assert "Explaining the vulnerability" in (tmp_path / "report.html").read_text()
    assert "median cosine similarity" in result.verdict.text


def test_a_model_lrp_cannot_read_is_left_out_with_the_reason():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    assert "explain" not in default_stages(model)
    reason = explain_stage.ExplainStage().applies_to(model)
    assert reason is not None and "Tanh" in reason
