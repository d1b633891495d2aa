"""The ``detect`` stage: a model file with a detector, audited under three attackers."""

from __future__ import annotations

import functools

import vulnscope.audit.stages.detect as detect_stage
from vulnscope.attacks import CarliniWagner
from vulnscope.audit import audit
from vulnscope.audit.settings import default_stages
from vulnscope.data import load_digits
from vulnscope.detect.adaptive import DetectorAwareCW
from vulnscope.detect.density import DensityDetector
from vulnscope.detect.detected import Detected
from vulnscope.detect.evaluation import evaluate_detector


def test_the_stage_runs_the_three_threat_models_and_never_trusts_zero_knowledge_alone(
    digits_cnn, digits_test, tmp_path, monkeypatch
):
    monkeypatch.setattr(detect_stage, "_ATTACKED", 40)  # every class
    monkeypatch.setattr(detect_stage, "_CLEAN", 40)
    # the stage's own attacks, shortened: what is tested here is the stage, not their strength
    short = functools.partial(
        evaluate_detector,
        attack=CarliniWagner(steps=20, binary_search_steps=3, initial_const=0.1),
        adaptive=DetectorAwareCW(steps=30, binary_search_steps=3, seed=0),
    )
    monkeypatch.setattr(detect_stage, "evaluate_detector", short)
    train = load_digits("train")
    detector = DensityDetector().fit(digits_cnn, train.x[:300], train.y[:300], seed=0)
    model = Detected(digits_cnn, detector)
    assert "detect" in default_stages(model) and "detect" not in default_stages(digits_cnn)
    result = audit(
        model,
        digits_test.take(80),  # 40 attacked and clean, 40 the attacker's own
        model_name="cnn+density",
        stages=["detect"],
        quick=True,
        out=tmp_path,
    )
    section = result.results["detect"]
    assert [t.knowledge for t in section.threat_models] == ["zero", "perfect", "limited"]
    assert section.detector == "density" and section.clean == 40
    zero, perfect, limited = section.threat_models
    assert perfect.gradient == "exact" and perfect.attacked == zero.attacked > 0
    # the attacker fitted its copy on points 40..79 and attacked every one of the 40
    assert limited.skipped is None and limited.attacked == zero.attacked
    assert perfect.successes <= perfect.fooled <= perfect.attacked
    text = result.verdict.text
    assert "an attacker who knows it succeeds on" in text
    assert ("it is broken" in text) == (perfect.success_rate >= 0.5)
    assert "robust" not in text.replace("robustness", "") or "not a proof" in text
    assert (tmp_path / "detect.png").is_file()
