"""The audit's one-paragraph verdict: how vulnerable the model is, where, and what to try.

Written from the record alone (so a stored ``results.json`` gives the same verdict): the
level comes from the fraction of correctly classified points that stay robust at the
middle budget of each norm's curve; the paragraph adds what the other stages found.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEVELS", "verdict"]

LEVELS = ("high", "moderate", "low", "unknown")
"""Vulnerability levels, from worst to best; ``unknown`` when no robustness stage ran."""

_HIGH, _MODERATE = 0.5, 0.85
"""Kept fractions of the clean accuracy below which the level is high, moderate."""

_NORM_NAMES = {"linf": "L∞", "l2": "L2"}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _reference(curve: dict[str, Any]) -> tuple[float, float] | None:
    """The middle positive budget of a curve and the robust accuracy there."""
    pairs = [(e, a) for e, a in zip(curve["epsilons"], curve["accuracy"], strict=True) if e > 0]
    return pairs[len(pairs) // 2] if pairs else None


def _level(kept: float) -> str:
    return "high" if kept < _HIGH else "moderate" if kept < _MODERATE else "low"


def verdict(record: dict[str, Any]) -> dict[str, str]:
    """``{"level", "headline", "text"}`` for an audit record (see :data:`LEVELS`)."""
    clean = float(record["clean_accuracy"])
    robustness = record.get("robustness", {})
    references = {
        norm: reference
        for norm, curve in robustness.items()
        if (reference := _reference(curve)) is not None
    }
    sentences: list[str] = []
    level = "unknown"
    if references and clean > 0:
        kept = {norm: accuracy / clean for norm, (_, accuracy) in references.items()}
        worst = min(kept, key=lambda norm: kept[norm])
        level = _level(kept[worst])
        eps, accuracy = references[worst]
        headline = (
            f"{level.capitalize()} vulnerability: at {_NORM_NAMES[worst]} ε = {eps:g}, "
            f"accuracy falls from {_percent(clean)} to {_percent(accuracy)}."
        )
        for norm, (other_eps, other_accuracy) in references.items():
            if norm != worst:
                sentences.append(
                    f"At {_NORM_NAMES[norm]} ε = {other_eps:g} it is {_percent(other_accuracy)}."
                )
    elif references:
        headline = "The model misclassifies every clean input evaluated."
    else:
        headline = "No robustness stage ran, so there is no robust accuracy to judge by."
    sentences += _where(record)
    sentences += _what_to_try(record, level)
    return {"level": level, "headline": headline, "text": " ".join(sentences)}


def _where(record: dict[str, Any]) -> list[str]:
    """Sentences on where the model is fragile, from the stages that ran."""
    sentences = []
    minimal = record.get("minimal_perturbations")
    if minimal and minimal.get("median") is not None:
        typical = minimal.get("input_l2_median")
        share = (
            f" ({_percent(minimal['median'] / typical)} of a typical input's norm)"
            if (typical)
            else ""
        )
        sentences.append(
            f"Half of the correctly classified inputs change class under an L2 perturbation "
            f"of at most {minimal['median']:.3g}{share}."
        )
    dangerous = record.get("dangerous")
    if dangerous and dangerous.get("fisher_l2") is not None:
        sentences.append(
            f"Along the most dangerous direction (the top eigenvector of the input Fisher "
            f"information) the class changes after a median L2 step of "
            f"{dangerous['fisher_l2']:.3g}."
        )
    amplification = record.get("amplification")
    if amplification and amplification.get("growth_fisher_median"):
        along, random = (
            amplification["growth_fisher_median"][-1],
            amplification["growth_random_median"][-1],
        )
        if along is not None and random is not None:
            blocks, sigma = amplification["blocks"], amplification["singular_value_median"]
            loudest = max(range(len(blocks)), key=lambda i: sigma[i] or 0.0)
            sentences.append(
                f"A small step along that direction grows {along:.3g}-fold by the logits "
                f"against {random:.3g}-fold for a random one; block {blocks[loudest]!r} "
                f"amplifies most."
            )
    rg = record.get("rg")
    if rg:
        relevant = rg.get("relevant_layers", [])
        sentences.append(
            f"The RG analysis finds relevant operators (leading eigenvalue above one) at "
            f"layer{'s' if len(relevant) > 1 else ''} {', '.join(map(str, relevant))}: "
            f"there small input changes grow with depth."
            if relevant
            else "The RG analysis finds no relevant operator between hidden layers: their "
            "stability matrices contract, so small input changes shrink with depth there."
        )
        layers = rg.get("summary", {}).get("layers", [])
        label = [row for row in layers if row["kind"] != "eigenvalue"]
        if label and (label[0]["leading_mean"] or 0.0) > 1.0:
            sentences.append(
                f"The label layer amplifies them (leading singular value "
                f"{label[0]['leading_mean']:.3g})."
            )
    return sentences


def _what_to_try(record: dict[str, Any], level: str) -> list[str]:
    """Advice: what to try next, given the level and the masking checks."""
    masking = sorted({
        name
        for curve in record.get("robustness", {}).values()
        for evaluation in curve["evaluations"]
        for name, fired in evaluation["checks"].items()
        if fired
    })  # fmt: skip
    advice = []
    if masking:
        advice.append(
            f"The gradient-masking checks fired ({', '.join(masking)}): the gradient attacks may "
            "overstate robustness, so trust the black-box (Square) figures and an adaptive "
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
