"""Per-sample losses that attacks maximise.

Every loss takes logits (N, C), the true labels ``y`` (N,) and, for targeted attacks, the
target labels (N,) or ``None``, and returns a per-sample value (N,) that grows as the
attack makes progress: away from ``y`` when untargeted, towards ``target`` when targeted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from vulnscope.errors import InvalidArgumentError

__all__ = ["LOSSES", "Loss", "cross_entropy", "dlr", "is_adversarial", "margin"]

Loss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _best_other(logits: Tensor, label: Tensor) -> Tensor:
    """Largest logit among the classes other than ``label``, shape (N,)."""
    masked = logits.scatter(1, label[:, None], float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Cross-entropy of ``y`` (untargeted) or minus that of ``target`` (targeted)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The logit margin of Carlini and Wagner (2017), "Towards evaluating the robustness".

    Untargeted: ``max_{i != y} z_i - z_y``; targeted: ``z_t - max_{i != t} z_i``. Positive
    exactly when the attack has succeeded.
    """
    if target is None:
        return _best_other(logits, y) - logits.gather(1, y[:, None])[:, 0]
    return logits.gather(1, target[:, None])[:, 0] - _best_other(logits, target)


def dlr(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Difference of logits ratio (DLR), the loss of Croce and Hein (2020).

    From "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks". Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits. Invariant to shifting and rescaling the logits, so a model cannot mask its
    gradients by scaling them. Needs at least 3 classes (4 when targeted).
    """
    needed = 3 if target is None else 4
    if logits.shape[1] < needed:
        kind = "targeted" if target is not None else "untargeted"
        raise InvalidArgumentError(
            f"loss 'dlr' needs at least {needed} classes when {kind}, "
            f"the model has {logits.shape[1]}; use loss='ce' or loss='margin'"
        )
    ordered = logits.sort(dim=1, descending=True).values
    true_logit = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        scale = ordered[:, 0] - ordered[:, 2]
        return -(true_logit - _best_other(logits, y)) / (scale + 1e-12)
    scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3])
    return -(true_logit - logits.gather(1, target[:, None])[:, 0]) / (scale + 1e-12)


LOSSES: dict[str, Loss] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def is_adversarial(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Whether each prediction counts as a success: wrong class, or the target class."""
    predicted = logits.argmax(dim=1)
    if target is None:
        return predicted != y
    return predicted == target
