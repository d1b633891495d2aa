"""The gradient-masking checks a careful evaluator runs beside a robustness evaluation.

A model can look robust because its gradients are useless to the attacker rather than
because it is robust: saturated softmax outputs, zero or NaN gradients (shattered
gradients), randomness in the forward pass (stochastic gradients). Athalye, Carlini and
Wagner (2018), "Obfuscated gradients give a false sense of security", and Carlini et al.
(2019), "On evaluating adversarial robustness", list the symptoms checked here:

* the outputs look like probabilities (a final softmax: cross-entropy saturates);
* input gradients that are zero or not finite at correctly classified points;
* outputs that change between two evaluations of the same input (randomised defences:
  the attacker then needs expectation over transformation);
* a single-step attack breaking points that the iterative attacks missed;
* a black-box attack breaking points that the white-box attacks missed.

Each check returns a :class:`MaskingCheck`; :func:`vulnscope.evaluate.standard_evaluation`
reports the triggered ones as warnings in its result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from vulnscope.models.checks import looks_like_probabilities
from vulnscope.models.state import preserved_model_state

__all__ = [
    "MaskingCheck",
    "MaskingSymptoms",
    "check_black_box_gap",
    "check_gradients",
    "check_outputs",
    "check_single_step_gap",
    "masking_symptoms",
]


@dataclass(frozen=True)
class MaskingCheck:
    """The outcome of one gradient-masking check.

    Attributes:
        name: short identifier, e.g. ``"zero_gradients"``.
        triggered: whether the symptom was seen.
        message: what was seen and what to do about it (empty when not triggered).

    """

    name: str
    triggered: bool
    message: str = ""


@dataclass(frozen=True)
class MaskingSymptoms:
    """The raw findings of the checks that look at the clean inputs, which add up over chunks.

    A sharded or checkpointed evaluation measures them chunk by chunk
    (:func:`masking_symptoms`) and joins them with :meth:`merged`: the flags by OR (a
    symptom seen in any chunk is seen), the gradient counts by sum, so the merged
    :meth:`checks` name the same counts as one pass over all the points would.

    Attributes:
        probabilities: the outputs looked like probabilities (rows non-negative, summing
            to 1).
        randomised: two evaluations of the same inputs differed.
        gradient_points: correctly classified points whose input gradient was examined.
        zero_gradients: of those, points with an all-zero gradient.
        non_finite_gradients: of those, points with a NaN or infinite gradient entry.

    """

    probabilities: bool
    randomised: bool
    gradient_points: int
    zero_gradients: int
    non_finite_gradients: int

    @classmethod
    def merged(cls, parts: Sequence[MaskingSymptoms]) -> MaskingSymptoms:
        """The symptoms of the union of the chunks ``parts`` measured."""
        return cls(
            probabilities=any(part.probabilities for part in parts),
            randomised=any(part.randomised for part in parts),
            gradient_points=sum(part.gradient_points for part in parts),
            zero_gradients=sum(part.zero_gradients for part in parts),
            non_finite_gradients=sum(part.non_finite_gradients for part in parts),
        )

    def checks(self) -> list[MaskingCheck]:
        """The checks: probability and randomised outputs, then the gradients' if any ran."""
        checks = _output_checks(self.probabilities, self.randomised)
        if self.gradient_points:
            checks.append(
                _gradient_check(
                    self.gradient_points, self.zero_gradients, self.non_finite_gradients
                )
            )
        return checks


def masking_symptoms(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    correct: Tensor,
    *,
    logits: Tensor | None = None,
) -> MaskingSymptoms:
    """Measure the clean-input symptoms on ``x`` (N, ...) with labels ``y`` (N,).

    Args:
        model: maps (N, ...) to logits (N, C).
        x: inputs (N, ...).
        y: labels (N,).
        correct: (N,) bool, the points the model classifies correctly (the only ones
            whose gradients matter: an attack works on them alone).
        logits: (N, C) the model's outputs at ``x`` when the caller has them; they serve
            as the first of the two passes the randomness check compares.

    """
    with preserved_model_state(model), torch.no_grad():
        first = model(x) if logits is None else logits
        second = model(x)
    points, zero, non_finite = _gradient_counts(model, x, y, correct)
    return MaskingSymptoms(
        probabilities=looks_like_probabilities(first),
        randomised=not torch.equal(first, second),
        gradient_points=points,
        zero_gradients=zero,
        non_finite_gradients=non_finite,
    )


def _output_checks(probabilities: bool, randomised: bool) -> list[MaskingCheck]:
    return [
        MaskingCheck(
            "probability_outputs",
            probabilities,
            "the model's outputs look like probabilities (non-negative rows summing to 1): "
            "cross-entropy on them saturates and hides gradients; evaluate the model "
            "without its final softmax"
            if probabilities
            else "",
        ),
        MaskingCheck(
            "randomised_outputs",
            randomised,
            "two evaluations of the same inputs differ: the model is randomised, so "
            "gradients and success are random too; attack the expectation over the "
            "randomness (EOT) or put the model in eval mode"
            if randomised
            else "",
        ),
    ]


def _gradient_counts(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, correct: Tensor
) -> tuple[int, int, int]:
    """(points examined, all-zero gradients, non-finite gradients) at the correct points."""
    rows = correct.nonzero()[:, 0]
    if rows.numel() == 0:
        return 0, 0, 0
    with preserved_model_state(model), torch.enable_grad():
        points = x[rows].detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(points), y[rows], reduction="sum")
        (grad,) = torch.autograd.grad(loss, points)
    flat = grad.flatten(1)
    non_finite = int((~torch.isfinite(flat)).any(dim=1).sum())
    zero = int((flat == 0).all(dim=1).sum())
    return rows.numel(), zero, non_finite


def _gradient_check(n: int, zero: int, non_finite: int) -> MaskingCheck:
    problems = []
    if zero:
        problems.append(f"{zero} of {n} correctly classified points have an all-zero gradient")
    if non_finite:
        problems.append(f"{non_finite} of {n} have a NaN or infinite gradient")
    if not problems:
        return MaskingCheck("gradients", False)
    return MaskingCheck(
        "gradients",
        True,
        "input gradients of the cross-entropy: "
        + "; ".join(problems)
        + ": gradient attacks are blind there (shattered or saturated gradients); "
        "trust the black-box results and consider BPDA or a smooth surrogate",
    )


def check_outputs(model: Callable[[Tensor], Tensor], x: Tensor) -> list[MaskingCheck]:
    """Probability-like outputs and randomised outputs, from two passes over ``x`` (N, ...)."""
    with preserved_model_state(model), torch.no_grad():
        first = model(x)
        second = model(x)
    return _output_checks(looks_like_probabilities(first), not torch.equal(first, second))


def check_gradients(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, correct: Tensor
) -> MaskingCheck | None:
    """Zero or non-finite input gradients of the cross-entropy at the correct points.

    Args:
        model: maps (N, ...) to logits (N, C).
        x: inputs (N, ...).
        y: labels (N,).
        correct: (N,) bool, the points the model classifies correctly (the only ones an
            attack works on).

    Returns:
        A triggered check when any correct point has an all-zero or non-finite gradient,
        else an untriggered one; ``None`` when no point is correct.

    """
    n, zero, non_finite = _gradient_counts(model, x, y, correct)
    return _gradient_check(n, zero, non_finite) if n else None


def check_single_step_gap(
    single_step_broken: Tensor, iterative_broken: Tensor, name: str
) -> MaskingCheck:
    """A single-step attack broke points that the iterative ones missed.

    Args:
        single_step_broken: (N,) bool, broken by the single-step attack.
        iterative_broken: (N,) bool, broken by the iterative attacks.
        name: the single-step attack's name, for the message.

    """
    extra = int((single_step_broken & ~iterative_broken).sum())
    return MaskingCheck(
        "single_step_beats_iterative",
        extra > 0,
        f"{name} broke {extra} points that the iterative attacks missed: their "
        "optimisation is failing (gradient masking or too few steps)"
        if extra
        else "",
    )


def check_black_box_gap(black_box_broken: int, attacked: int, name: str) -> MaskingCheck:
    """A black-box attack broke points that every white-box attack before it missed.

    Args:
        black_box_broken: points the black-box attack broke (all of them survived the
            white-box attacks, which ran first).
        attacked: points it attacked.
        name: the black-box attack's name, for the message.

    """
    return MaskingCheck(
        "black_box_beats_white_box",
        black_box_broken > 0,
        f"{name} (black-box) broke {black_box_broken} of the {attacked} points that "
        "survived the white-box attacks: their gradients mislead, a sign of gradient masking"
        if black_box_broken
        else "",
    )
