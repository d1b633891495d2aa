"""The audit's one-paragraph verdict: how vulnerable the model is, where, and what to try.

Written from the stages' typed results alone (so a stored ``results.json`` gives the same
verdict): the level comes from the fraction of the clean accuracy that each robustness
stage keeps at its middle budget (:attr:`StageVerdict.reference`), the worst norm deciding;
the paragraph adds what each stage found, in stage order, then advice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vulnscope.audit.budgets import budget_label
from vulnscope.audit.record import Verdict
from vulnscope.audit.stage import registered_stages

__all__ = ["LEVELS", "verdict"]

LEVELS = ("high", "moderate", "low", "unknown")
"""Vulnerability levels, from worst to best; ``unknown`` when no robustness stage ran."""

_HIGH, _MODERATE = 0.5, 0.85
"""Kept fractions of the clean accuracy below which the level is high, moderate."""


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _level(kept: float) -> str:
    return "high" if kept < _HIGH else "moderate" if kept < _MODERATE else "low"


def verdict(clean_accuracy: float, results: Mapping[str, Any]) -> Verdict:
    """The verdict on a model of ``clean_accuracy`` from its stages' ``results`` (by name)."""
    stages = registered_stages()
    parts = [stages[name].verdict(result, clean_accuracy) for name, result in results.items()]
    references = {part.reference[0]: part.reference[1:] for part in parts if part.reference}
    sentences: list[str] = []
    level = "unknown"
    if references and clean_accuracy > 0:
        kept = {norm: accuracy / clean_accuracy for norm, (_, accuracy) in references.items()}
        worst = min(kept, key=lambda norm: kept[norm])
        level = _level(kept[worst])
        eps, accuracy = references[worst]
        headline = (
            f"{level.capitalize()} vulnerability: at {worst} "
            f"ε = {budget_label(eps)}, accuracy falls from {_percent(clean_accuracy)} to "
            f"{_percent(accuracy)}."
        )
        sentences += [
            f"At {norm} ε = {budget_label(other_eps)} it is {_percent(other)}."
            for norm, (other_eps, other) in references.items()
            if norm != worst
        ]
    elif references:
        headline = "The model misclassifies every clean input evaluated."
    else:
        headline = "No robustness stage ran, so there is no robust accuracy to judge by."
    for part in parts:
        sentences += part.sentences
    masking = sorted({name for part in parts for name in part.masking})
    return Verdict(level, headline, " ".join(sentences + _what_to_try(masking, level)))


def _what_to_try(masking: list[str], level: str) -> list[str]:
    """Advice: what to try next, given the level and the masking checks that fired."""
    advice = []
    if masking:
        advice.append(
            f"The gradient-masking checks fired ({', '.join(masking)}): the gradient attacks "
            "may overstate robustness, so trust the black-box (Square) figures and an adaptive "
            "attack over any defence that relies on obscured gradients."
        )
    if level in ("high", "moderate"):
        advice.append(
            "To try: adversarial training (Madry et al.; vulnscope defend --method pgd trains "
            "the digits CNN that way), or TRADES when clean accuracy matters more; curvature "
            "regularisation (CURE) is cheaper but recovers less. Audit the defended model "
            "the same way."
        )
    elif level == "low":
        advice.append(
            "The model holds up at these budgets; check larger budgets before relying on it."
        )
    return advice
