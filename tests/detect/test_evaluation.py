"""evaluate_detector and the perfect-knowledge attack, on a toy classifier and toy detectors."""

from __future__ import annotations

import itertools
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from vulnscope.attacks import CarliniWagner
from vulnscope.detect.adaptive import DetectorAwareCW
from vulnscope.detect.base import Detector
from vulnscope.detect.evaluation import evaluate_detector, roc_curve
from vulnscope.errors import InvalidArgumentError, ModelError


class LowMargin(Detector):
    """Flags inputs the classifier is unsure about: score ``-(Z_top - Z_second) / scale``.

    C&W's minimal adversarial examples sit on the decision boundary (margin near 0), so a
    blind attack is flagged; an attacker who knows the score pushes past the threshold.
    """

    name = "low-margin"
    paper = "none: a test double"
    fitted_rows: ClassVar[list[Tensor]] = []

    def __init__(self, *, quantise: bool = False) -> None:
        super().__init__()
        self.quantise = quantise

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        self.register_buffer("scale", torch.ones(()))

    def fit_parts(self, model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        LowMargin.fitted_rows.append(x.clone())
        with torch.no_grad():
            self.scale.fill_(float(self._margins(model, x).std()))

    def _margins(self, model, x: Tensor) -> Tensor:
        if self.quantise:
            x = torch.round(x * 8) / 8  # no useful gradient: the attack must smooth
        top = model(x).topk(2, dim=1).values
        return top[:, 0] - top[:, 1]

    def raw_score(self, model, x: Tensor) -> Tensor:
        return -self._margins(model, x) / self.scale


class QuantisedLowMargin(LowMargin):
    differentiable = False


class NoisyLowMargin(LowMargin):
    """The low-margin score plus Gaussian noise of standard deviation 0.3: a random score."""

    stochastic = True

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().build(input_shape, num_classes)
        self.generator = torch.Generator().manual_seed(0)

    def raw_score(self, model, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape[0], generator=self.generator)
        return super().raw_score(model, x) + 0.3 * noise


def _setup(detector_class=LowMargin, n: int = 40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(n, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    detector = detector_class(quantise=detector_class is QuantisedLowMargin)
    return model, x, y, detector.fit(model, torch.rand(60, 1, 4, 4), torch.zeros(60).long())


_BLIND = CarliniWagner(steps=30, binary_search_steps=4, initial_const=0.1)
_AWARE = DetectorAwareCW(steps=40, binary_search_steps=4, learning_rate=0.05, samples=4)


def test_auc_is_the_mann_whitney_statistic_and_the_curve_spans_the_square():
    generator = torch.Generator().manual_seed(1)
    negatives = torch.randint(0, 6, (17,), generator=generator).double()
    positives = torch.randint(2, 9, (11,), generator=generator).double()
    pairs = list(itertools.product(positives.tolist(), negatives.tolist()))
    direct = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs) / len(pairs)
    roc, auc = roc_curve(negatives, positives)
    assert auc == pytest.approx(direct, abs=1e-12)
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert bool((roc.fpr.diff() >= 0).all() and (roc.tpr.diff() >= 0).all())
    for t, f, p in zip(roc.thresholds, roc.fpr, roc.tpr, strict=True):  # flagged: above t
        assert float((negatives > t).double().mean()) == f
        assert float((positives > t).double().mean()) == p


@pytest.mark.parametrize("detector_class", [LowMargin, QuantisedLowMargin])
def test_perfect_knowledge_examples_fool_classifier_and_detector(detector_class):
    model, x, y, detector = _setup(detector_class, n=20)
    threshold = detector.threshold_at(0.05, torch.rand(40, 1, 4, 4))
    result = _AWARE(detector, model, x, y)
    assert result.gradient == ("exact" if detector_class is LowMargin else "smoothed")
    assert int(result.success.sum()) >= 10
    hits = result.x_adv[result.success]
    assert bool(((hits >= 0) & (hits <= 1)).all())
    with torch.no_grad():
        assert bool((model(hits).argmax(1) != y[result.success]).all())
    assert bool((detector.score(hits) <= threshold).all())
    assert torch.allclose(result.norms, (result.x_adv - x).flatten(1).norm(dim=1))


def test_with_confidence_the_kept_examples_clear_both_margins():
    model, x, y, detector = _setup(n=20)
    threshold = detector.threshold_at(0.05, torch.rand(40, 1, 4, 4))
    kappa = 0.3
    confident = DetectorAwareCW(steps=40, binary_search_steps=4, confidence=kappa)
    result = confident(detector, model, x, y)
    with torch.no_grad():
        logits = model(result.x_adv)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], -torch.inf).amax(1)
        cleared = (other - true >= kappa - 1e-4) & (
            detector.score(result.x_adv) <= threshold - kappa + 1e-4
        )
    # a point never found with both margins falls back to its least-flagged wrong iterate;
    # without κ in the success test, the kept points would sit just across both boundaries
    assert int(cleared.sum()) >= 15 and bool((result.success | ~cleared).all())


def test_against_a_random_score_the_kept_points_pass_fresh_draws_with_the_assurance():
    model, x, y, detector = _setup(NoisyLowMargin, n=12)
    threshold = detector.threshold_at(0.05, torch.rand(40, 1, 4, 4))
    passed = {}
    for assurance in (0.5, 0.95):
        attack = DetectorAwareCW(steps=30, binary_search_steps=3, assurance=assurance)
        result = attack(detector, model, x, y)
        assert result.gradient == "eot"
        with torch.no_grad():
            draws = torch.stack([detector.score(result.x_adv) for _ in range(200)])
        passed[assurance] = float((draws <= threshold).double().mean())
    # aiming at the mean keeps points a fresh draw flags about half the time
    assert passed[0.5] < 0.7 and passed[0.95] > 0.85


@pytest.mark.parametrize("detector_class", [LowMargin, QuantisedLowMargin])
def test_perfect_knowledge_evades_where_zero_knowledge_is_caught(detector_class):
    model, x, y, detector = _setup(detector_class)
    zero = evaluate_detector(detector, model, x, y, knowledge="zero", attack=_BLIND)
    perfect = evaluate_detector(
        detector, model, x, y, knowledge="perfect", attack=_BLIND, adaptive=_AWARE
    )
    assert zero.auc > 0.9 and zero.tpr_at_5fpr > 0.8 and zero.success_rate < 0.2
    assert perfect.success_rate > zero.success_rate + 0.5
    assert perfect.distortion_ratio > 1.0  # evading costs distortion
    assert perfect.undefended_distortion == zero.undefended_distortion
    assert perfect.attacked == zero.attacked == 40 and zero.clean == 40
    assert detector.threshold != detector.threshold  # restored: still unset (NaN)


def test_limited_knowledge_fits_its_copy_on_the_other_half():
    model, x, y, detector = _setup()
    LowMargin.fitted_rows.clear()
    report = evaluate_detector(
        detector, model, x, y, knowledge="limited", attack=_BLIND, adaptive=_AWARE, seed=3
    )
    (seen,) = LowMargin.fitted_rows
    assert torch.equal(seen, x[~report.evaluated])
    assert int(report.evaluated.sum()) == 20 and report.clean == 20 and report.attacked == 20
    # a row of the evaluated half is never among the rows the copy was fitted on
    assert not bool((x[report.evaluated][:, None] == seen[None]).flatten(2).all(2).any())
    other = evaluate_detector(
        detector, model, x, y, knowledge="limited", attack=_BLIND, adaptive=_AWARE, seed=4
    )
    assert not torch.equal(other.evaluated, report.evaluated)
    assert 0.0 <= report.success_rate <= 1.0 and report.knowledge == "limited"


def test_limited_knowledge_fits_its_copy_on_the_attackers_own_data():
    model, x, y, detector = _setup(n=20)
    own = torch.rand(30, 1, 4, 4)
    LowMargin.fitted_rows.clear()
    report = evaluate_detector(
        detector,
        model,
        x,
        y,
        knowledge="limited",
        attack=_BLIND,
        adaptive=_AWARE,
        attacker_inputs=own,
        attacker_labels=torch.zeros(30).long(),
    )
    (seen,) = LowMargin.fitted_rows
    assert torch.equal(seen, own)
    assert bool(report.evaluated.all()) and report.attacked == 20 and report.clean == 20


def test_bad_input_gets_one_clear_error_each():
    model, x, y, detector = _setup()
    other = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with pytest.raises(ModelError, match="fitted on another classifier"):
        evaluate_detector(detector, other, x, y)
    with pytest.raises(InvalidArgumentError, match="needs at least 20 clean inputs, got 19"):
        evaluate_detector(detector, model, x, y, clean=x[:19])
    with pytest.raises(InvalidArgumentError, match="knowledge must be one of"):
        evaluate_detector(detector, model, x, y, knowledge="partial")
    with pytest.raises(InvalidArgumentError, match="only the limited-knowledge attacker"):
        evaluate_detector(detector, model, x, y, attacker_inputs=x, attacker_labels=y)
    with pytest.raises(InvalidArgumentError, match=r"attacker_labels: .* got only one"):
        evaluate_detector(detector, model, x, y, knowledge="limited", attacker_inputs=x)
    with pytest.raises(InvalidArgumentError, match=r"shape per point \(1, 4, 4\), got \(16,\)"):
        evaluate_detector(
            detector,
            model,
            x,
            y,
            knowledge="limited",
            attacker_inputs=x.flatten(1),
            attacker_labels=y,
        )
    with pytest.raises(InvalidArgumentError, match="cannot be fitted on its 3 points"):
        evaluate_detector(
            detector, model, x, y, knowledge="limited", attacker_inputs=x[:3], attacker_labels=y[:3]
        )
