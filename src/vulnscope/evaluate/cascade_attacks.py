"""The attacks the standard cascade can run, by name, and the check of a user's list.

Croce and Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack): :data:`DEFAULT_CASCADE` is its standard
version. :func:`check_cascade` turns names and configured attacks into the cascade's
stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vulnscope.attacks import APGD, FAB, FGSM, PGD, Attack, CarliniWagner, DeepFool, Square
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["CASCADE_ATTACKS", "DEFAULT_CASCADE", "CascadeAttack", "check_cascade"]


@dataclass(frozen=True)
class CascadeAttack:
    """One attack of the cascade, by name.

    Attributes:
        name: how reports name it, e.g. ``"APGD-T"``.
        build: ``(norm, eps, seed, num_classes) -> Attack`` at the budget ``eps``.
        targeted: run once per target class: the 2nd, 3rd, ... most likely class at the
            clean input, each time on the points still robust. As in AutoAttack, a run
            breaks a point it sends to any class but the true one, the target or not.
        black_box: uses the model's outputs only (its successes after the white-box
            attacks are a gradient-masking symptom).
        norms: the norms it supports.

    """

    name: str
    build: Callable[[str, float, int, int], Attack]
    targeted: bool = False
    black_box: bool = False
    norms: tuple[str, ...] = ("linf", "l2")


def _targeted_loss(num_classes: int) -> str:
    """The targeted DLR needs 4 classes; the C&W margin is its stand-in below that."""
    return "dlr" if num_classes >= 4 else "margin"


CASCADE_ATTACKS: dict[str, CascadeAttack] = {
    "apgd-ce": CascadeAttack(
        "APGD-CE", lambda norm, eps, seed, c: APGD(norm=norm, eps=eps, loss="ce", seed=seed)
    ),
    "apgd-dlr": CascadeAttack(
        "APGD-DLR",
        lambda norm, eps, seed, c: APGD(
            norm=norm, eps=eps, loss="dlr" if c >= 3 else "margin", seed=seed
        ),
    ),
    "apgd-t": CascadeAttack(
        "APGD-T",
        lambda norm, eps, seed, c: APGD(
            norm=norm, eps=eps, loss=_targeted_loss(c), targeted=True, seed=seed
        ),
        targeted=True,
    ),
    "fab": CascadeAttack("FAB", lambda norm, eps, seed, c: FAB(norm=norm, eps=eps, seed=seed)),
    "fab-t": CascadeAttack(
        "FAB-T",
        lambda norm, eps, seed, c: FAB(norm=norm, eps=eps, targeted=True, seed=seed),
        targeted=True,
    ),
    "square": CascadeAttack(
        "Square",
        lambda norm, eps, seed, c: Square(norm=norm, eps=eps, queries=5000, p_init=0.8, seed=seed),
        black_box=True,
    ),
    "pgd": CascadeAttack(
        "PGD-40", lambda norm, eps, seed, c: PGD(norm=norm, eps=eps, steps=40, seed=seed)
    ),
    "fgsm": CascadeAttack("FGSM", lambda norm, eps, seed, c: FGSM(norm=norm, eps=eps)),
    "deepfool": CascadeAttack("DeepFool", lambda norm, eps, seed, c: DeepFool(norm=norm, eps=eps)),
    "cw": CascadeAttack(
        "C&W", lambda norm, eps, seed, c: CarliniWagner(norm=norm, eps=eps, seed=seed)
    ),
}
"""Every attack the cascade can run, by the name ``attacks=`` and ``--attacks`` take."""

DEFAULT_CASCADE: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
"""AutoAttack's standard version (Croce and Hein 2020)."""


def _from_instance(attack: Attack, norm: str) -> CascadeAttack:
    """A user's configured attack as a cascade stage: its ``eps`` becomes the budget."""
    if attack.norm != norm:
        raise InvalidArgumentError(
            f"attacks: {attack!r} works in norm {attack.norm!r}, the evaluation in {norm!r}"
        )
    name = type(attack).__name__ + ("-T" if attack.targeted else "")

    def build(norm: str, eps: float, seed: int, num_classes: int) -> Attack:
        return attack.replace(eps=eps)

    return CascadeAttack(
        name, build, targeted=attack.targeted, black_box=attack.gradient_free, norms=(norm,)
    )


def check_cascade(attacks: Any, norm: str) -> list[CascadeAttack]:
    """The cascade ``attacks`` describes, validated.

    Each entry is a name from :data:`CASCADE_ATTACKS` (the standard configurations) or a
    configured :class:`~vulnscope.attacks.Attack` in the evaluation's norm, whose ``eps``
    is replaced by each budget (a targeted one runs once per target class).
    """
    if isinstance(attacks, str) or not isinstance(attacks, Sequence):
        raise InvalidTypeError(
            f"attacks must be a sequence of names from {sorted(CASCADE_ATTACKS)} or attacks, "
            f"got {type(attacks).__name__}"
        )
    if not attacks:
        raise InvalidArgumentError("attacks must name at least one attack, got an empty list")
    chosen: list[CascadeAttack] = []
    for entry in attacks:
        if isinstance(entry, Attack):
            spec = _from_instance(entry, norm)
        elif isinstance(entry, str) and entry.lower() in CASCADE_ATTACKS:
            spec = CASCADE_ATTACKS[entry.lower()]
        else:
            raise InvalidArgumentError(
                f"attacks: unknown attack {entry!r}; choose from {sorted(CASCADE_ATTACKS)} "
                "or pass a configured vulnscope Attack"
            )
        if norm not in spec.norms:
            raise InvalidArgumentError(
                f"attacks: {entry!r} does not support norm {norm!r} (it supports {spec.norms})"
            )
        if any(spec.name == other.name for other in chosen):
            raise InvalidArgumentError(f"attacks: {spec.name!r} is listed twice")
        chosen.append(spec)
    return chosen
