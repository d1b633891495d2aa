r"""MagNet against an oblivious and an adaptive attacker.

Meng and Chen (2017), "MagNet: a two-pronged defense against adversarial examples",
evaluate against an *oblivious* attacker: adversarial examples crafted against the bare
classifier (Carlini-Wagner L2 among others), then passed through the defence. Most are
either flagged by a detector or pulled back to the right class by the reformer.

Carlini and Wagner (2017), "MagNet and 'Efficient defenses against adversarial attacks'
are not robust to adversarial examples", attack the whole pipeline instead: the
*adaptive* attacker here maximises the classifier's margin on the reformed input while a
penalty keeps every detector's score below its threshold, and counts a success only at a
point that is misclassified **and** undetected (their "Adversarial examples are not
easily detected" builds attacks on detectors the same way).

Both evaluations report the same figures (:class:`MagNetEvaluation`), over every sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bool,
    check_eps,
    check_inputs,
    check_int,
    check_labels,
    check_model_matches_inputs,
    check_norm,
    check_real,
    check_seed,
    describe,
)
from vulnscope.attacks.base import Attack
from vulnscope.attacks.losses import margin
from vulnscope.attacks.norms import lp_norm, project, random_in_ball, steepest_ascent
from vulnscope.defences.magnet import MagNet
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.checks import warn_if_training_mode
from vulnscope.models.state import preserved_model_state

__all__ = [
    "AdaptiveMagNetAttack",
    "AdaptiveResult",
    "MagNetEvaluation",
    "evaluate_adaptive",
    "evaluate_oblivious",
]

_BOUNDS = (0.0, 1.0)
_TINY = 1e-30


@dataclass(frozen=True)
class MagNetEvaluation:
    """How MagNet fares against one attacker, over all ``samples`` test inputs.

    Attributes:
        attacker: ``"oblivious"`` (crafted against the bare classifier) or ``"adaptive"``
            (crafted against the whole pipeline).
        attack: the attack's ``repr``.
        norm: the norm of the perturbations.
        eps: the perturbation budget, ``None`` for a minimal attack without a cap.
        samples: number of test inputs.
        clean_accuracy: accuracy of the bare classifier on the clean inputs.
        pipeline_accuracy: accuracy of ``classifier(reformer(x))`` on the clean inputs.
        clean_false_positive_rate: fraction of the clean inputs that a detector flags.
        bare_success_rate: fraction of the adversarial inputs the bare classifier gets
            wrong (clean mistakes included).
        detection_rate: fraction of the adversarial inputs that a detector flags.
        undetected_accuracy: accuracy of the reformed classifier on the adversarial inputs
            no detector flags (NaN when every one is flagged).
        defended_fraction: fraction of the adversarial inputs that are flagged or
            classified correctly after reforming; one minus the attacker's success rate.
        median_norm: median size of the perturbations, in ``norm``, over all samples
            (an attack that fails on a sample may leave it unperturbed).

    """

    attacker: str
    attack: str
    norm: str
    eps: float | None
    samples: int
    clean_accuracy: float
    pipeline_accuracy: float
    clean_false_positive_rate: float
    bare_success_rate: float
    detection_rate: float
    undetected_accuracy: float
    defended_fraction: float
    median_norm: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with None for NaN."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class AdaptiveResult:
    """What :class:`AdaptiveMagNetAttack` returns.

    Attributes:
        x_adv: (N, ...) for each sample, an undetected misclassified point if one was
            found (the one whose largest score-to-threshold ratio is smallest); else the
            detected misclassified point with the smallest ratio; else the point where
            the right class leads the others by the least.
        success: (N,) bool: ``x_adv`` is misclassified by ``magnet`` (the reformed
            classifier) and flagged by no detector.

    """

    x_adv: Tensor
    success: Tensor

    @property
    def success_rate(self) -> float:
        """Fraction of samples with an undetected misclassified point."""
        return float(self.success.double().mean())


class AdaptiveMagNetAttack:
    r"""PGD against MagNet as a whole: fool the reformed classifier, stay below every threshold.

    The attack of Carlini and Wagner (2017), "MagNet and 'Efficient defenses against
    adversarial attacks' are not robust to adversarial examples", as projected gradient
    ascent (Madry et al. 2018) on

    .. math::
        \min(m(f(\mathrm{AE}(x'))), \kappa) - \lambda \sum_i \max(s_i(x') / t_i - 1, 0)

    with ``m`` the Carlini-Wagner margin (positive once misclassified), ``s_i`` and
    ``t_i`` the detectors' scores and thresholds. Capping the margin at ``κ`` leaves the
    penalty in charge once the point is misclassified with room to spare. Each penalty
    weight ``λ`` in ``penalties`` is one run of ``steps`` steps from a random point of the
    ball; a run attacks only the samples that no earlier run broke. Every iterate is
    scored, and each sample keeps its best (see :class:`AdaptiveResult`).

    Args:
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        eps: perturbation budget, >= 0.
        steps: gradient steps per run.
        step_size: step length; ``None`` for ``2.5 * eps / steps``.
        penalties: the weights ``λ`` of the detector penalty, one run each, > 0.
        confidence: ``κ`` > 0, the margin beyond which only the penalty pulls.
        random_start: start each run from a uniform point of the ball instead of ``x``.
        seed: seed of the random starts.

    Shape:
        x: (N, ...) in [0, 1]; y: (N,) int64.

    """

    def __init__(
        self,
        *,
        norm: str = "linf",
        eps: float,
        steps: int = 100,
        step_size: float | None = None,
        penalties: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
        confidence: float = 1.0,
        random_start: bool = True,
        seed: int | None = 0,
    ) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(eps)
        self.steps = check_int(steps, "steps")
        self.step_size = (
            None
            if step_size is None
            else check_real(step_size, "step_size", minimum=0.0, exclusive=True)
        )
        if isinstance(penalties, str) or not isinstance(penalties, Sequence) or not penalties:
            raise InvalidArgumentError(
                f"penalties must be a non-empty sequence of weights, got {describe(penalties)}"
            )
        self.penalties = tuple(
            check_real(value, f"penalties[{i}]", minimum=0.0, exclusive=True)
            for i, value in enumerate(penalties)
        )
        self.confidence = check_real(confidence, "confidence", minimum=0.0, exclusive=True)
        self.random_start = check_bool(random_start, "random_start")
        self.seed = check_seed(seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(norm={self.norm!r}, eps={self.eps!r}, steps={self.steps}, "
            f"step_size={self.step_size!r}, penalties={self.penalties!r}, "
            f"confidence={self.confidence!r}, random_start={self.random_start}, seed={self.seed})"
        )

    def __call__(self, magnet: MagNet, x: Tensor, y: Tensor) -> AdaptiveResult:
        """Attack ``magnet`` at the inputs ``x`` (N, ...) in [0, 1] with labels ``y`` (N,)."""
        x, y = _check_arguments(magnet, x, y)
        warn_if_training_mode(magnet)
        generator = make_generator(self.seed, x.device)
        best = x.clone()
        tier = torch.full_like(y, 3)
        value = torch.full(y.shape, math.inf, dtype=x.dtype, device=x.device)
        with preserved_model_state(magnet), torch.enable_grad():
            for penalty in self.penalties:
                todo = (tier > 0).nonzero()[:, 0]
                if todo.numel() == 0:
                    break
                found = self._run(magnet, x[todo], y[todo], penalty, generator)
                better = _better(found[1], found[2], tier[todo], value[todo])
                rows = todo[better]
                best[rows], tier[rows], value[rows] = (part[better] for part in found)
        return AdaptiveResult(x_adv=best, success=tier == 0)

    def _run(
        self, magnet: MagNet, x: Tensor, y: Tensor, penalty: float, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One run at penalty weight ``penalty``: each sample's best iterate, tier, value."""
        step_size = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        x_cur = x.clone()
        if self.random_start:
            noise = random_in_ball(x, self.norm, self.eps, generator=generator)
            x_cur = project(x, x + noise, norm=self.norm, eps=self.eps, bounds=_BOUNDS)
        best, tier = x.clone(), torch.full_like(y, 3)
        value = torch.full(y.shape, math.inf, dtype=x.dtype, device=x.device)
        thresholds = magnet.thresholds_
        for step in range(self.steps + 1):
            x_cur = x_cur.detach().requires_grad_(True)
            reformed, scores = magnet.logits_and_scores(x_cur)
            margins = margin(reformed, y, None)
            ratios = scores / thresholds.to(scores.dtype).clamp_min(_TINY)
            with torch.no_grad():
                new_tier, new_value = _rank(margins, scores, ratios, thresholds)
                better = _better(new_tier, new_value, tier, value)
                best[better], tier[better], value[better] = (
                    x_cur.detach()[better],
                    new_tier[better],
                    new_value[better],
                )
            if step == self.steps:
                break
            objective = margins.clamp_max(self.confidence)
            objective = objective - penalty * (ratios - 1.0).clamp_min(0.0).sum(dim=1)
            (grad,) = torch.autograd.grad(objective.sum(), x_cur)
            moved = x_cur.detach() + step_size * steepest_ascent(grad, self.norm)
            x_cur = project(x, moved, norm=self.norm, eps=self.eps, bounds=_BOUNDS)
        return best, tier, value


def _rank(
    margins: Tensor, scores: Tensor, ratios: Tensor, thresholds: Tensor
) -> tuple[Tensor, Tensor]:
    """Each point's tier (0 undetected and wrong, 1 detected and wrong, 2 right) and value.

    Within tiers 0 and 1 a smaller largest ratio is better; within tier 2, a smaller
    margin of the right class. Detection is judged exactly as :meth:`MagNet.detect` does.
    """
    wrong = margins > 0
    detected = (scores > thresholds).any(dim=1)
    tier = torch.where(wrong, detected.long(), torch.full_like(detected, 2, dtype=torch.long))
    value = torch.where(wrong, ratios.amax(dim=1), -margins)
    return tier, value


def _better(tier: Tensor, value: Tensor, best_tier: Tensor, best_value: Tensor) -> Tensor:
    return (tier < best_tier) | ((tier == best_tier) & (value < best_value))


def _check_arguments(magnet: Any, x: Any, y: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(magnet, MagNet):
        raise InvalidTypeError(
            f"magnet must be a vulnscope.defences.magnet.MagNet (see fit_magnet), "
            f"got {describe(magnet)}"
        )
    x = check_inputs(x, bounds=_BOUNDS)
    y = check_labels(y, n=x.shape[0], device=x.device)
    check_model_matches_inputs(magnet, x, "magnet")
    return x, y


@torch.no_grad()
def _summarise(
    magnet: MagNet,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    *,
    attacker: str,
    attack: str,
    norm: str,
    eps: float | None,
) -> MagNetEvaluation:
    """Every figure of :class:`MagNetEvaluation`, recomputed from the points themselves."""
    with preserved_model_state(magnet):
        clean_reformed, clean_scores = magnet.logits_and_scores(x)
        reformed, scores = magnet.logits_and_scores(x_adv)
        bare_clean = magnet.classifier(x).argmax(dim=1)
        bare_adv = magnet.classifier(x_adv).argmax(dim=1)
    clean_detected = (clean_scores > magnet.thresholds_).any(dim=1)
    detected = (scores > magnet.thresholds_).any(dim=1)
    correct = reformed.argmax(dim=1) == y
    undetected = ~detected
    return MagNetEvaluation(
        attacker=attacker,
        attack=attack,
        norm=norm,
        eps=eps,
        samples=x.shape[0],
        clean_accuracy=_mean(bare_clean == y),
        pipeline_accuracy=_mean(clean_reformed.argmax(dim=1) == y),
        clean_false_positive_rate=_mean(clean_detected),
        bare_success_rate=_mean(bare_adv != y),
        detection_rate=_mean(detected),
        undetected_accuracy=_mean(correct[undetected]) if bool(undetected.any()) else math.nan,
        defended_fraction=_mean(detected | correct),
        median_norm=float(lp_norm(x_adv - x, norm).median()),
    )


def _mean(flags: Tensor) -> float:
    return float(flags.double().mean())


def evaluate_oblivious(magnet: MagNet, x: Tensor, y: Tensor, attack: Attack) -> MagNetEvaluation:
    """Craft adversarial examples against the bare classifier, then pass them through MagNet.

    The oblivious attacker of Meng and Chen (2017): it knows the classifier, not the
    detectors or the reformer.

    Args:
        magnet: the defended classifier (:func:`~vulnscope.defences.magnet.fit_magnet`).
        x: test inputs (N, ...) in [0, 1].
        y: their labels (N,).
        attack: any vulnscope attack, e.g. ``CarliniWagner()`` or ``PGD(eps=0.1)``, run on
            ``magnet.classifier``.

    Returns:
        :class:`MagNetEvaluation`.

    """
    x, y = _check_arguments(magnet, x, y)
    if not isinstance(attack, Attack):
        raise InvalidTypeError(
            f"attack must be a vulnscope.attacks.Attack such as PGD(eps=0.1), "
            f"got {describe(attack)}"
        )
    result = attack(magnet.classifier, x, y)
    return _summarise(
        magnet,
        x,
        result.x_adv,
        y,
        attacker="oblivious",
        attack=repr(attack),
        norm=attack.norm,
        eps=attack.eps,
    )


def evaluate_adaptive(
    magnet: MagNet, x: Tensor, y: Tensor, attack: AdaptiveMagNetAttack
) -> MagNetEvaluation:
    """Attack the whole pipeline (:class:`AdaptiveMagNetAttack`) and score the result.

    The figures are recomputed from the returned points, independently of the attack's
    own bookkeeping.

    Args:
        magnet: the defended classifier (:func:`~vulnscope.defences.magnet.fit_magnet`).
        x: test inputs (N, ...) in [0, 1].
        y: their labels (N,).
        attack: the adaptive attack, e.g. ``AdaptiveMagNetAttack(eps=0.1)``.

    Returns:
        :class:`MagNetEvaluation`.

    """
    x, y = _check_arguments(magnet, x, y)
    if not isinstance(attack, AdaptiveMagNetAttack):
        raise InvalidTypeError(
            f"attack must be an AdaptiveMagNetAttack, got {describe(attack)}; "
            "use evaluate_oblivious for the attacks of vulnscope.attacks"
        )
    result = attack(magnet, x, y)
    return _summarise(
        magnet,
        x,
        result.x_adv,
        y,
        attacker="adaptive",
        attack=repr(attack),
        norm=attack.norm,
        eps=attack.eps,
    )
