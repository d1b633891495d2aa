"""A detector against three attackers: Carlini and Wagner's evaluation.

Carlini and Wagner (2017), "Adversarial examples are not easily detected: bypassing ten
detection methods", judge a detector against three threat models:

- **zero knowledge**: C&W L2 against the classifier alone, ignoring the detector;
- **perfect knowledge**: C&W's combined loss through the detector's own score and
  threshold (:class:`~vulnscope.detect.adaptive.DetectorAwareCW`);
- **limited knowledge**: the attacker fits its own copy of the detector (same class,
  same settings) on data of its own, disjoint from the defender's, attacks that copy with
  perfect knowledge, and the real detector scores the result (transfer). Carlini and
  Wagner split the training set in half between defender and attacker; pass the
  attacker's half as ``attacker_inputs``/``attacker_labels``. Without them the attacker
  takes half of each class of the evaluated points, a far smaller copy.

Each gives a :class:`DetectionReport`: the ROC curve of the detector separating held-out
clean inputs from the adversarial examples that fool the classifier, its AUC, its true
positive rate at the requested false-positive rate, the attack's success rate against
classifier and detector together (misclassified and not flagged, checked by plain forward
passes), and the mean L2 distortion of those successes relative to the same C&W attack's
on the undefended classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_choice,
    check_fraction,
    check_inputs,
    check_labels,
    check_model,
    check_seed,
    describe,
)
from vulnscope.attacks.base import Attack
from vulnscope.attacks.carlini_wagner import CarliniWagner
from vulnscope.detect.adaptive import DetectorAwareCW
from vulnscope.detect.base import Detector, Model, model_digest
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError, VulnscopeError
from vulnscope.models.state import preserved_model_state

__all__ = ["KNOWLEDGE", "ROC", "DetectionReport", "evaluate_detector", "roc_curve"]

KNOWLEDGE = ("zero", "perfect", "limited")
"""The attacker's knowledge of the detector, weakest last but one."""

_BOUNDS = (0.0, 1.0)


@dataclass(frozen=True)
class ROC:
    """A receiver operating characteristic: positives are adversarial, negatives clean.

    Attributes:
        fpr: (K,) false-positive rates, from 0 up to 1.
        tpr: (K,) true-positive rates at the same thresholds.
        thresholds: (K,) the thresholds (flagged: score strictly above; ``inf`` first).

    """

    fpr: Tensor
    tpr: Tensor
    thresholds: Tensor


def roc_curve(negatives: Tensor, positives: Tensor) -> tuple[ROC, float]:
    """The ROC curve and its area (the Mann–Whitney statistic, ties counting half).

    Args:
        negatives: (M,) scores of clean inputs.
        positives: (P,) scores of adversarial inputs; M, P >= 1.

    Returns:
        the curve, through (0, 0) and (1, 1), and the area under it.

    """
    scores = torch.cat([negatives, positives]).double()
    cuts = torch.cat([scores.new_tensor([math.inf]), scores.unique().flip(0)])
    fpr = (negatives.double()[None, :] >= cuts[:, None]).double().mean(1)
    tpr = (positives.double()[None, :] >= cuts[:, None]).double().mean(1)
    # flagged at cut k means score >= cut_k, i.e. strictly above the next lower score
    area = float(torch.trapezoid(tpr, fpr))
    thresholds = torch.cat([cuts[:1], cuts[2:], cuts.new_tensor([-math.inf])])
    return ROC(fpr=fpr, tpr=tpr, thresholds=thresholds), area


@dataclass(frozen=True)
class DetectionReport:
    """How a detector fares against one attacker.

    Attributes:
        knowledge: ``"zero"``, ``"perfect"`` or ``"limited"``.
        detector: the detector's name.
        gradient: how the adaptive attack differentiated the score (``"exact"``, ``"eot"``,
            ``"smoothed"``), ``""`` for zero knowledge.
        auc: ROC AUC of the detector, held-out clean inputs against the attack's examples
            that fool the classifier (NaN when none does).
        tpr_at_5fpr: the share of those examples flagged at the threshold giving ``fpr``
            on the held-out clean inputs (5% by default; NaN when none fools it).
        fpr: the false-positive rate the threshold was set at.
        threshold: that threshold.
        success_rate: share of the attacked inputs whose adversarial example is
            misclassified and not flagged.
        distortion_ratio: mean L2 of those successes over the mean L2 of the undefended
            classifier's successes under the same C&W attack without the detector.
        mean_distortion: the numerator; NaN without successes.
        undefended_distortion: the denominator.
        attacked: how many inputs were attacked (those the classifier gets right; for
            limited knowledge without attacker data, of the half the attacker did not see).
        fooled: how many adversarial examples fool the classifier.
        successes: how many also escape the detector.
        clean: how many held-out clean inputs set the threshold and the ROC's negatives.
        roc: the ROC curve.
        evaluated: (N,) bool over ``inputs``: those the attacker may attack (all but, for
            limited knowledge without attacker data, the half its copy was fitted on).

    """

    knowledge: str
    detector: str
    gradient: str
    auc: float
    tpr_at_5fpr: float
    fpr: float
    threshold: float
    success_rate: float
    distortion_ratio: float
    mean_distortion: float
    undefended_distortion: float
    attacked: int
    fooled: int
    successes: int
    clean: int
    roc: ROC
    evaluated: Tensor


def evaluate_detector(
    detector: Detector,
    model: Model,
    inputs: Tensor,
    labels: Tensor,
    *,
    knowledge: str = "zero",
    attack: CarliniWagner | None = None,
    adaptive: DetectorAwareCW | None = None,
    fpr: float = 0.05,
    clean: Tensor | None = None,
    attacker_inputs: Tensor | None = None,
    attacker_labels: Tensor | None = None,
    seed: int | None = 0,
) -> DetectionReport:
    """Evaluate a fitted ``detector`` of ``model`` against one threat model.

    Args:
        detector: fitted on ``model`` (:meth:`~vulnscope.detect.base.Detector.fit`); its
            threshold is set here and restored afterwards.
        model: the classifier (logits).
        inputs: (N, C, H, W) test inputs in [0, 1], not used to fit the detector.
        labels: (N,) their labels.
        knowledge: ``"zero"``, ``"perfect"`` or ``"limited"`` (see the module docstring).
        attack: the detector-blind L2 attack: the zero-knowledge attack and the
            undefended baseline of ``distortion_ratio`` (default C&W L2, 100 steps at rate
            0.05, 5 runs of the binary search: it fools every digit the CNN gets right,
            where 50 steps at 0.01 fooled fewer than half).
        adaptive: the perfect- and limited-knowledge attack (default
            :class:`~vulnscope.detect.adaptive.DetectorAwareCW` with ``seed``).
        fpr: false-positive rate of the threshold on held-out clean inputs, in (0, 1).
        clean: (M, C, H, W) held-out clean inputs for the threshold and the ROC; default
            ``inputs`` themselves (for limited knowledge without ``attacker_inputs``, the
            half the attacker did not see).
        attacker_inputs: (A, C, H, W) in [0, 1]: the limited-knowledge attacker's own clean
            data, on which it fits its copy of the detector and sets the copy's threshold
            at ``fpr``; it should be disjoint from the data the detector was fitted on.
            Then every input is attacked. Default: half of each class of ``inputs``
            (seeded), which are then not attacked. Only with ``knowledge="limited"``.
        attacker_labels: (A,) their labels; given exactly when ``attacker_inputs`` is.
        seed: seed of the limited-knowledge split and the attacker's copy.

    Returns:
        :class:`DetectionReport`.

    Raises:
        ModelError: ``detector`` was fitted on another classifier.
        InvalidArgumentError: too few clean inputs for a threshold at ``fpr``, an
            unknown ``knowledge``, or attacker data without limited knowledge, without its
            labels, or too little of it to fit the copy.

    """
    if not isinstance(detector, Detector):
        raise InvalidTypeError(f"detector must be a fitted Detector, got {describe(detector)}")
    model = check_model(model)
    digest = model_digest(model)
    if not detector.fitted_on or digest != detector.fitted_on:
        raise ModelError(
            f"model: the {detector.name} detector was fitted on another classifier (digest "
            f"{detector.fitted_on[:12] or 'none: not fitted'}), not on this one "
            f"({digest[:12] or 'a plain function'}); fit it on the model you evaluate"
        )
    x = check_inputs(inputs, bounds=_BOUNDS, name="inputs")
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    level = check_choice(knowledge, "knowledge", KNOWLEDGE)
    rate = check_fraction(fpr, "fpr")
    key = check_seed(seed)
    if attack is None:
        attack = CarliniWagner(
            steps=100, binary_search_steps=5, initial_const=0.1, learning_rate=0.05
        )
    if not isinstance(attack, Attack) or attack.norm != "l2":
        raise InvalidTypeError(f"attack must be an L2 vulnscope Attack, got {describe(attack)}")
    if adaptive is None:
        adaptive = DetectorAwareCW(seed=key)
    attacker = _attacker_data(attacker_inputs, attacker_labels, level, x)
    evaluated = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    if level == "limited" and attacker is None:
        evaluated[_attacker_half(y, key)] = False
        attacker = x[~evaluated], y[~evaluated]
    held_out = x[evaluated] if clean is None else clean
    saved = detector.threshold
    with preserved_model_state(model), preserved_model_state(detector):
        try:
            detector.threshold_at(rate, held_out)
            return _evaluate(
                detector,
                model,
                x,
                y,
                evaluated,
                attacker,
                level,
                attack,
                adaptive,
                rate,
                key,
                held_out,
            )
        finally:
            detector.threshold = saved


def _attacker_data(
    inputs: Tensor | None, labels: Tensor | None, level: str, x: Tensor
) -> tuple[Tensor, Tensor] | None:
    """The limited-knowledge attacker's own (inputs, labels), checked; None when not given."""
    if inputs is None and labels is None:
        return None
    if level != "limited":
        raise InvalidArgumentError(
            f"attacker_inputs: only the limited-knowledge attacker fits its own copy of the "
            f"detector, got knowledge={level!r}"
        )
    if inputs is None or labels is None:
        missing = "attacker_labels" if labels is None else "attacker_inputs"
        raise InvalidArgumentError(
            f"{missing}: attacker_inputs and attacker_labels are given together, got only one"
        )
    data = check_inputs(inputs, bounds=_BOUNDS, name="attacker_inputs")
    if data.shape[1:] != x.shape[1:]:
        raise InvalidArgumentError(
            f"attacker_inputs must have the inputs' shape per point {tuple(x.shape[1:])}, got "
            f"{tuple(data.shape[1:])}"
        )
    targets = check_labels(labels, n=data.shape[0], device=data.device, name="attacker_labels")
    return data.to(x.device), targets.to(x.device)


def _attacker_half(y: Tensor, key: int | None) -> Tensor:
    """The indices the limited-knowledge attacker fits its copy on.

    A seeded half of each class (the larger half where a class is odd), so that its copy
    sees every class the data has, as a detector fitted per class (the density) needs.
    """
    generator = make_generator(key, "cpu")
    order = torch.randperm(y.shape[0], generator=generator).to(y.device)
    chosen = [
        members[: (members.numel() + 1) // 2]
        for label in torch.unique(y)
        for members in [order[y[order] == label]]
    ]
    return torch.cat(chosen)


def _evaluate(
    detector: Detector,
    model: Model,
    x: Tensor,
    y: Tensor,
    evaluated: Tensor,
    attacker: tuple[Tensor, Tensor] | None,
    level: str,
    attack: Attack,
    adaptive: DetectorAwareCW,
    rate: float,
    key: int | None,
    held_out: Tensor,
) -> DetectionReport:
    with torch.no_grad():
        right = model(x).argmax(1) == y
    chosen = evaluated & right
    xs, ys = x[chosen], y[chosen]
    target = detector
    if level == "limited":  # fitted first: a copy that cannot be fitted fails fast
        assert attacker is not None  # evaluate_detector supplies it
        target = _attackers_copy(detector, model, attacker, rate, key)
    baseline = attack(model, xs, ys)
    undefended = _mean(baseline.norms[baseline.success])
    gradient = ""
    if level == "zero":
        x_adv = baseline.x_adv
    else:
        with torch.enable_grad():
            result = adaptive(target, model, xs, ys)
        x_adv, gradient = result.x_adv, result.gradient
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != ys
        scores = detector.score(x_adv)
        clean_scores = detector.score(held_out)
    success = fooled & (scores <= detector.threshold)
    if bool(fooled.any()):
        roc, auc = roc_curve(clean_scores, scores[fooled])
        tpr = float((scores[fooled] > detector.threshold).double().mean())
    else:
        empty = torch.empty(0, dtype=torch.float64)
        roc, auc, tpr = ROC(fpr=empty, tpr=empty, thresholds=empty), math.nan, math.nan
    distortion = _mean((x_adv - xs).flatten(1).norm(dim=1)[success])
    return DetectionReport(
        knowledge=level,
        detector=detector.name,
        gradient=gradient,
        auc=auc,
        tpr_at_5fpr=tpr,
        fpr=rate,
        threshold=detector.threshold,
        success_rate=_mean(success.double()) if xs.shape[0] else math.nan,
        distortion_ratio=distortion / undefended if undefended > 0 else math.nan,
        mean_distortion=distortion,
        undefended_distortion=undefended,
        attacked=int(xs.shape[0]),
        fooled=int(fooled.sum()),
        successes=int(success.sum()),
        clean=int(held_out.shape[0]),
        roc=roc,
        evaluated=evaluated,
    )


def _attackers_copy(
    detector: Detector,
    model: Model,
    data: tuple[Tensor, Tensor],
    rate: float,
    key: int | None,
) -> Detector:
    """The detector's class with its settings, fitted and thresholded on the attacker's data.

    The copy's threshold is set on the same clean points it was fitted on: the attacker has
    no others.
    """
    x, y = data
    copy = type(detector)(**detector.settings())
    try:
        copy.fit(model, x, y, seed=key)
        copy.threshold_at(rate, x)
    except VulnscopeError as error:
        raise InvalidArgumentError(
            f"attacker_inputs: the limited-knowledge attacker's copy of the {detector.name} "
            f"detector cannot be fitted on its {x.shape[0]} points (give it more as "
            f"attacker_inputs): {error}"
        ) from error
    return copy


def _mean(values: Tensor) -> float:
    return float(values.double().mean()) if values.numel() else math.nan
