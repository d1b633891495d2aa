"""Transferability: adversarial examples crafted on one model, scored on another.

Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow and Fergus (2014), "Intriguing
properties of neural networks": adversarial examples crafted on one network often fool
another network trained on a disjoint half of the same data. :func:`transferability`
measures this for any pair of models and any untargeted attack, and
:func:`transfer_between_halves` repeats the halves experiment on the reference digits
models. The model-extraction study scores a clone the same way
(:func:`vulnscope.cloning.measure_clone`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bool,
    check_inputs,
    check_int,
    check_labels,
    check_logits,
    check_model,
    check_real,
    check_seed,
    describe,
)
from vulnscope.attacks.base import Attack
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.cache import PRETRAINED, Recipe, train_recipe
from vulnscope.models.state import preserved_model_state

__all__ = [
    "HalvesTransfer",
    "Transfer",
    "predicted_class",
    "transfer_between_halves",
    "transferability",
]


def _rate(count: int, total: int) -> float:
    return count / total if total else math.nan


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Transfer:
    """Adversarial examples crafted on a source model, scored on a target model.

    Attributes:
        x_adv: (N, ...) the examples crafted on the source; ``x`` where not attacked.
        attacked: (N,) bool, the inputs that were attacked: those both models classify
            correctly (or, with ``require_source_correct=False``, those the target does).
        source_fooled: (N,) bool, attacked inputs whose example the source misclassifies
            (the attack's own success).
        target_fooled: (N,) bool, attacked inputs whose example the target misclassifies.
        source_accuracy: the source's accuracy on the clean inputs.
        target_accuracy: the target's accuracy on the clean inputs.
        attack: the attack's ``repr``.

    """

    x_adv: Tensor
    attacked: Tensor
    source_fooled: Tensor
    target_fooled: Tensor
    source_accuracy: float
    target_accuracy: float
    attack: str

    @property
    def n(self) -> int:
        """Inputs."""
        return int(self.attacked.numel())

    @property
    def n_attacked(self) -> int:
        """Inputs attacked."""
        return int(self.attacked.sum())

    @property
    def n_source_fooled(self) -> int:
        """Attacked inputs whose example fools the source."""
        return int(self.source_fooled.sum())

    @property
    def n_target_fooled(self) -> int:
        """Attacked inputs whose example fools the target (whether or not it fooled the source)."""
        return int(self.target_fooled.sum())

    @property
    def n_transferred(self) -> int:
        """Attacked inputs whose example fools both models."""
        return int((self.source_fooled & self.target_fooled).sum())

    @property
    def source_success_rate(self) -> float:
        """Fraction of the attacked inputs whose example fools the source; NaN if none."""
        return _rate(self.n_source_fooled, self.n_attacked)

    @property
    def transfer_rate(self) -> float:
        """Fraction of the examples that fool the source which also fool the target; NaN if none."""
        return _rate(self.n_transferred, self.n_source_fooled)

    @property
    def target_fooled_rate(self) -> float:
        """Fraction of the attacked inputs whose example fools the target; NaN if none.

        The figure a black-box attacker cares about (Papernot et al. 2017): it counts an
        example that fools the target even where it failed on the source.
        """
        return _rate(self.n_target_fooled, self.n_attacked)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the per-sample tensors), with None for NaN."""
        return {
            "attack": self.attack,
            "n": self.n,
            "n_attacked": self.n_attacked,
            "n_source_fooled": self.n_source_fooled,
            "n_target_fooled": self.n_target_fooled,
            "n_transferred": self.n_transferred,
            "source_accuracy": self.source_accuracy,
            "target_accuracy": self.target_accuracy,
            "source_success_rate": _finite_or_none(self.source_success_rate),
            "transfer_rate": _finite_or_none(self.transfer_rate),
            "target_fooled_rate": _finite_or_none(self.target_fooled_rate),
        }


def predicted_class(model: Callable[[Tensor], Any], x: Tensor, *, name: str = "model") -> Tensor:
    """The predicted class (N,) of a model returning logits or probabilities (N, C), or labels (N,).

    The model's state is left as found and no gradients are recorded.
    """
    with preserved_model_state(model), torch.no_grad():
        out = model(x)
    if isinstance(out, Tensor) and out.shape == (x.shape[0],) and not out.is_floating_point():
        return out.long()
    return check_logits(out, x.shape[0], name=name).argmax(dim=1)


def transferability(
    source: Callable[[Tensor], Tensor],
    target: Callable[[Tensor], Any],
    x: Tensor,
    y: Tensor,
    *,
    attack: Attack,
    require_source_correct: bool = True,
) -> Transfer:
    """Craft adversarial examples on ``source`` with ``attack`` and score them on ``target``.

    Only inputs that both models classify correctly are attacked (Szegedy et al. 2014),
    so that a mistake of either model is never counted as a transferred example. The
    source success rate is the attack's success on the source; the transfer rate is the
    fraction of the examples that fool the source which also fool the target. A model
    scored against itself transfers every example it was fooled by: rate 1.

    Args:
        source: the model the attack sees: inputs (N, ...) -> logits (N, C).
        target: the model the examples are scored on: logits or probabilities (N, C), or
            labels (N,); only its predicted class is used.
        x: inputs (N, ...), inside the attack's bounds.
        y: true labels (N,).
        attack: an untargeted :class:`~vulnscope.attacks.Attack` with its budget set (or
            a minimal attack).
        require_source_correct: attack only the inputs both models classify correctly;
            False attacks every input the target classifies correctly (an attacker's
            view: its own model's mistakes are examples too).

    Returns:
        :class:`Transfer`.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import PGD
        >>> from vulnscope.evaluate import transferability
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
        >>> result = transferability(model, model, x, y, attack=PGD(eps=0.3, steps=5))
        >>> result.n_transferred == result.n_source_fooled
        True

    """
    source = check_model(source, "source")
    target = check_model(target, "target")
    attack = _check_attack(attack)
    require_source_correct = check_bool(require_source_correct, "require_source_correct")
    x = check_inputs(x, bounds=attack.bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    source_ok = predicted_class(source, x, name="source") == y
    target_ok = predicted_class(target, x, name="target") == y
    attacked = target_ok & source_ok if require_source_correct else target_ok
    x_adv = x.detach().clone()
    source_fooled = torch.zeros_like(attacked)
    target_fooled = torch.zeros_like(attacked)
    rows = attacked.nonzero()[:, 0]
    if rows.numel() > 0:
        result = attack(source, x[rows], y[rows])
        x_adv[rows] = result.x_adv
        source_fooled[rows] = result.success
        target_fooled[rows] = predicted_class(target, result.x_adv, name="target") != y[rows]
    return Transfer(
        x_adv=x_adv,
        attacked=attacked,
        source_fooled=source_fooled,
        target_fooled=target_fooled,
        source_accuracy=float(source_ok.double().mean()),
        target_accuracy=float(target_ok.double().mean()),
        attack=repr(attack),
    )


@dataclass(frozen=True)
class HalvesTransfer:
    """The result of :func:`transfer_between_halves`.

    Attributes:
        first_to_second: examples crafted on the first network, scored on the second.
        second_to_first: examples crafted on the second network, scored on the first.
        first_half: (M,) indices into the training data of the first network's half.
        second_half: (N - M,) indices of the second half; disjoint from the first, and
            together they cover the training data.
        models: the two trained networks, in eval mode.

    """

    first_to_second: Transfer
    second_to_first: Transfer
    first_half: Tensor
    second_half: Tensor
    models: tuple[nn.Module, nn.Module]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary of both directions."""
        return {
            "half_sizes": [int(self.first_half.numel()), int(self.second_half.numel())],
            "first_to_second": self.first_to_second.to_dict(),
            "second_to_first": self.second_to_first.to_dict(),
        }


def split_halves(n: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint sorted index sets covering ``range(n)``, of sizes ``n // 2`` and the rest."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: n // 2].sort().values, order[n // 2 :].sort().values


def transfer_between_halves(
    train_data: ImageData,
    test_data: ImageData,
    *,
    attack: Attack,
    architecture: str | Callable[[], nn.Module] = "digits-cnn",
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
) -> HalvesTransfer:
    """Train one network on each half of the training data; measure transfer both ways.

    The experiment of Szegedy et al. (2014, section 4.3): the training data are split
    into two disjoint halves drawn with ``seed``, one network of the same architecture is
    trained on each exactly as :func:`vulnscope.models.pretrained` trains its reference
    model on the whole split (same initialisation seed, same recipe), so the two differ
    only in their data; then :func:`transferability` is measured on the test data from
    each network to the other.

    Args:
        train_data: the training data; each network sees one half.
        test_data: the data the examples are crafted from.
        attack: an untargeted attack with its budget set (or a minimal attack).
        architecture: a name in :data:`vulnscope.models.PRETRAINED` (trained with its
            recipe), or a callable returning a fresh ``nn.Module`` (built under ``seed``
            and trained with the ``"digits-cnn"`` recipe).
        seed: seed of the split, of both networks' initialisation and minibatch order.
        epochs: overrides the recipe's training epochs.
        batch_size: overrides the recipe's minibatch size.
        lr: overrides the recipe's Adam learning rate.
        weight_decay: overrides the recipe's weight decay.

    Returns:
        :class:`HalvesTransfer`.

    """
    attack = _check_attack(attack)
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if not isinstance(data, ImageData):
            raise InvalidTypeError(f"{name} must be an ImageData, got {describe(data)}")
    if len(train_data) < 2:
        raise InvalidArgumentError(
            f"train_data must hold at least 2 samples to be split in halves, got {len(train_data)}"
        )
    seed = check_seed(seed) or 0
    factory, recipe = _architecture(architecture)
    overrides: dict[str, Any] = {
        "epochs": None if epochs is None else check_int(epochs, "epochs"),
        "batch_size": None if batch_size is None else check_int(batch_size, "batch_size"),
        "lr": None if lr is None else check_real(lr, "lr", minimum=0.0, exclusive=True),
        "weight_decay": (
            None if weight_decay is None else check_real(weight_decay, "weight_decay", minimum=0.0)
        ),
    }
    recipe = replace(recipe, **{key: val for key, val in overrides.items() if val is not None})
    first, second = split_halves(len(train_data), seed=seed)
    models = []
    for half in (first, second):
        index = half.to(train_data.x.device)
        x_half, y_half = train_data.x[index], train_data.y[index]
        models.append(train_recipe(factory, recipe, x_half, y_half, seed=seed))
    x, y = test_data.x, test_data.y
    return HalvesTransfer(
        first_to_second=transferability(models[0], models[1], x, y, attack=attack),
        second_to_first=transferability(models[1], models[0], x, y, attack=attack),
        first_half=first,
        second_half=second,
        models=(models[0], models[1]),
    )


def _check_attack(attack: Any) -> Attack:
    if not isinstance(attack, Attack):
        raise InvalidTypeError(f"attack must be a vulnscope Attack, got {describe(attack)}")
    if attack.targeted:
        raise InvalidArgumentError(
            "attack must be untargeted: transferability counts any mistake of the target"
        )
    return attack


def _architecture(architecture: Any) -> tuple[Callable[[], nn.Module], Recipe]:
    """The model factory and its training recipe."""
    if isinstance(architecture, str):
        if architecture not in PRETRAINED:
            raise InvalidArgumentError(
                f"architecture must be one of {sorted(PRETRAINED)} or a callable returning "
                f"an nn.Module, got {architecture!r}"
            )
        return PRETRAINED[architecture]
    if callable(architecture):
        return architecture, PRETRAINED["digits-cnn"][1]
    raise InvalidTypeError(
        "architecture must be a name or a callable returning an nn.Module, "
        f"got {describe(architecture)}"
    )
