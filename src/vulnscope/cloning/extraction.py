"""The extraction (cloning) attack, and how well a clone stands in for its victim.

Tramèr, Zhang, Juels, Reiter and Ristenpart (2016), "Stealing machine learning models via
prediction APIs": an attacker queries a victim's prediction API and trains a clone of its
own on the (input, published output) pairs. With ``augmentation="jacobian"`` the attacker
starts from a small seed set and grows it where the clone's decision surface changes
(Papernot et al. 2017, :mod:`vulnscope.cloning.augmentation`). Kenway (2018b) argues the
clone's weights are what an attacker needs to craft adversarial inputs; so a clone is
judged by its accuracy, its agreement with the victim, and the transfer to the victim of
adversarial examples crafted on the clone (:func:`measure_clone`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_choice,
    check_eps,
    check_inputs,
    check_int,
    check_labels,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_norm,
    check_real,
    describe,
)
from vulnscope.attacks.pgd import PGD
from vulnscope.cloning.augmentation import jacobian_augmentation, periodic_step
from vulnscope.cloning.oracle import BlackBox, QueryBudgetExceededError
from vulnscope.errors import InvalidTypeError, ModelError
from vulnscope.evaluate.transfer import predicted_class, transferability
from vulnscope.models.seeded import build_seeded
from vulnscope.models.training import train_classifier

__all__ = ["CloneMeasurement", "Extraction", "Trainer", "extract", "measure_clone"]

Trainer = Callable[[nn.Module, Tensor, Tensor, int], nn.Module]
"""``trainer(clone, inputs (S, ...), published probability vectors (S, C), seed) -> clone``."""


@dataclass(frozen=True)
class CloneMeasurement:
    """How well a clone stands in for the model it copies, on a labelled test set.

    Attributes:
        accuracy: the clone's top-1 accuracy on the test labels.
        reference_accuracy: the reference (true victim) model's top-1 accuracy.
        agreement: fraction of test inputs where clone and reference predict the same class.
        transfer_rate: over the test inputs the reference classifies correctly, the
            fraction whose adversarial example crafted on the clone (PGD) the reference
            misclassifies; NaN if the reference gets none right.
        clone_attack_success: PGD's success on the clone itself over the same inputs
            (an input the clone already misclassifies counts as a success).
        n_test: test inputs.
        n_attacked: test inputs the reference classifies correctly (the attacked ones).
        n_clone_fooled: attacked inputs whose adversarial example fools the clone.
        n_transferred: attacked inputs whose adversarial example fools the reference.
        eps: PGD's budget.
        norm: PGD's norm.
        steps: PGD's steps.

    """

    accuracy: float
    reference_accuracy: float
    agreement: float
    transfer_rate: float
    clone_attack_success: float
    n_test: int
    n_attacked: int
    n_clone_fooled: int
    n_transferred: int
    eps: float
    norm: str
    steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with None for NaN."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class Extraction:
    """The result of :func:`extract`.

    Attributes:
        clone: the trained clone, in eval mode.
        queries_used: queries this extraction sent to the victim.
        query_inputs: the queried inputs (S, ...), in the order they were sent.
        query_outputs: what the victim published for them, (S, C) float64 probability
            vectors (one-hot for a label-only victim).
        labels_only: whether the victim published labels only.
        round_sizes: the size of the training set in each substitute-training round
            (one round without augmentation).
        measurement: the clone measured against the reference, when a test set was given.

    """

    clone: nn.Module
    queries_used: int
    query_inputs: Tensor
    query_outputs: Tensor
    labels_only: bool
    round_sizes: tuple[int, ...]
    measurement: CloneMeasurement | None


def extract(
    victim: BlackBox | Callable[[Tensor], Tensor],
    queries: Tensor,
    architecture: nn.Module | Callable[[], nn.Module],
    *,
    query_budget: int | None = None,
    augmentation: Literal["none", "jacobian"] = "none",
    augmentation_step: float = 0.1,
    augmentation_tau: int = 3,
    rounds: int = 4,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    trainer: Trainer | None = None,
    seed: int = 0,
    test: tuple[Tensor, Tensor] | None = None,
    reference: Callable[[Tensor], Tensor] | None = None,
    transfer_eps: float = 0.1,
    transfer_norm: str = "linf",
    transfer_steps: int = 20,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Extraction:
    """Clone ``victim`` from its published outputs on ``queries``.

    Without augmentation the attacker queries its natural inputs (at most
    ``query_budget`` of them: a seeded random subset if there are more) and trains the
    clone once. With ``augmentation="jacobian"`` (Papernot et al. 2017) ``queries`` is the
    seed set S_0 and each of up to ``rounds`` substitute-training rounds trains the clone
    (continuing from the previous round) on everything queried so far, then queries
    S_ρ's Jacobian-augmented points, with step ``augmentation_step`` whose sign flips
    every ``augmentation_tau`` rounds; when the budget left is smaller than the new set,
    a seeded random subset of it is queried, so the budget is spent exactly. Every
    argument is checked before the first query.

    Args:
        victim: a :class:`BlackBox`, or any callable publishing probability vectors
            (B, C) or labels (B,), which is wrapped in ``BlackBox(max_queries=query_budget)``.
        queries: the attacker's natural inputs (Q, ...) inside ``bounds``.
        architecture: a callable returning a fresh ``nn.Module`` (built under a fork of
            the global RNG seeded with ``seed``), or a module, deep-copied as the
            initial clone. It maps inputs to C logits.
        query_budget: the most queries to send (``None``: all of ``queries``, or every
            round's points with augmentation); >= 1.
        augmentation: ``"none"`` or ``"jacobian"``.
        augmentation_step: λ > 0, the Linf length of an augmentation step.
        augmentation_tau: τ, rounds between flips of the step's sign.
        rounds: substitute-training rounds with augmentation (Papernot's ρ_max + 1).
        epochs: training epochs (per round) of the default trainer.
        batch_size: minibatch size of the default trainer.
        lr: Adam's learning rate in the default trainer.
        trainer: ``trainer(clone, inputs, probability targets, seed) -> clone``; default:
            :func:`~vulnscope.models.train_classifier` on the soft cross-entropy.
        seed: seed of the clone's initialisation, subsets, training and PGD.
        test: ``(x_test, y_test)`` to measure the clone on (see :func:`measure_clone`).
        reference: the victim's true model for the measurement (logits, probabilities
            or labels); its calls are not queries. Default: the victim callable itself.
        transfer_eps: PGD's budget in the measurement.
        transfer_norm: PGD's norm in the measurement.
        transfer_steps: PGD's steps in the measurement.
        bounds: ``(low, high)`` bounds of valid inputs.

    Returns:
        An :class:`Extraction`.

    """
    bounds = check_bounds(bounds)
    queries = check_inputs(queries, bounds=bounds, name="queries").detach()
    if query_budget is not None:
        query_budget = check_int(query_budget, "query_budget")
    augmentation = check_choice(augmentation, "augmentation", ("none", "jacobian"))  # type: ignore[assignment]
    step = check_real(augmentation_step, "augmentation_step", minimum=0.0, exclusive=True)
    tau = check_int(augmentation_tau, "augmentation_tau")
    rounds = check_int(rounds, "rounds")
    if augmentation == "none":
        rounds = 1
    seed = check_int(seed, "seed", minimum=0)
    train = _trainer(trainer, epochs, batch_size, lr)
    if test is not None:
        if not isinstance(test, tuple) or len(test) != 2:
            raise InvalidTypeError(f"test must be a pair (x_test, y_test), got {describe(test)}")
        x_test = check_inputs(test[0], bounds=bounds, name="x_test")
        y_test = check_labels(test[1], n=x_test.shape[0], device=x_test.device, name="y_test")
    if reference is not None:
        reference = check_model(reference, "reference")
    transfer_eps = check_eps(transfer_eps, "transfer_eps")
    transfer_norm = check_norm(transfer_norm, "transfer_norm")
    transfer_steps = check_int(transfer_steps, "transfer_steps")
    box = victim if isinstance(victim, BlackBox) else BlackBox(victim, max_queries=query_budget)
    budget = _least(query_budget, box.queries_left)
    if budget == 0:
        raise QueryBudgetExceededError(f"the victim's query budget is spent: {box!r}")
    clone = _initial_clone(architecture, seed, queries)
    width = _output_width(clone, queries[:1])
    if box.num_classes is not None:
        _check_width(width, box.num_classes)

    generator = torch.Generator().manual_seed(seed)
    inputs = _subset(queries, budget, generator)
    start = box.queries_used
    outputs = box(inputs)
    _check_width(width, outputs.shape[1])
    sizes = []
    for round_index in range(rounds):
        clone = _train(train, clone, inputs, outputs, seed + round_index)
        sizes.append(inputs.shape[0])
        spent = box.queries_used - start
        if round_index == rounds - 1 or (budget is not None and spent >= budget):
            break
        new = jacobian_augmentation(
            clone,
            inputs,
            outputs.argmax(dim=1),
            step=periodic_step(step, round_index, tau),
            bounds=bounds,
        )
        new = _subset(new, None if budget is None else budget - spent, generator)
        inputs, outputs = torch.cat([inputs, new]), torch.cat([outputs, box(new)])

    measurement = None
    if test is not None:
        measurement = measure_clone(
            clone,
            box.victim if reference is None else reference,
            x_test,
            y_test,
            eps=transfer_eps,
            norm=transfer_norm,
            steps=transfer_steps,
            seed=seed,
            bounds=bounds,
        )
    return Extraction(
        clone=clone,
        queries_used=box.queries_used - start,
        query_inputs=inputs,
        query_outputs=outputs,
        labels_only=bool(box.labels_only),
        round_sizes=tuple(sizes),
        measurement=measurement,
    )


def measure_clone(
    clone: Callable[[Tensor], Tensor],
    reference: Callable[[Tensor], Tensor],
    x_test: Tensor,
    y_test: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> CloneMeasurement:
    """Accuracy, agreement with the reference, and transfer of the clone's adversarial examples.

    Over the test inputs the reference classifies correctly, untargeted PGD (Madry et al.
    2018; ``steps`` steps from a random start seeded with ``seed``) is run on the CLONE
    within ``eps`` in ``norm``; the transfer rate is the fraction of those adversarial
    examples the reference misclassifies (Papernot et al. 2017's transferability), i.e.
    :attr:`~vulnscope.evaluate.Transfer.target_fooled_rate` of
    :func:`~vulnscope.evaluate.transferability` with ``require_source_correct=False``.

    Args:
        clone: the clone, inputs (N, ...) -> logits (N, C), differentiable.
        reference: the model the clone copies: logits or probabilities (N, C), or labels
            (N,); only its predicted class is used.
        x_test: test inputs (N, ...) inside ``bounds``.
        y_test: test labels (N,).
        eps: PGD's budget, >= 0.
        norm: PGD's norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: PGD's steps.
        seed: seed of PGD's random start.
        bounds: ``(low, high)`` bounds of valid inputs.

    Returns:
        A :class:`CloneMeasurement`.

    """
    clone = check_model(clone, "clone")
    reference = check_model(reference, "reference")
    bounds = check_bounds(bounds)
    x = check_inputs(x_test, bounds=bounds, name="x_test")
    y = check_labels(y_test, n=x.shape[0], device=x.device, name="y_test")
    eps = check_eps(eps)
    norm = check_norm(norm)
    steps = check_int(steps, "steps")
    seed = check_int(seed, "seed", minimum=0)
    clone_class = predicted_class(clone, x, name="clone")
    reference_class = predicted_class(reference, x, name="reference")
    attack = PGD(norm=norm, eps=eps, steps=steps, random_start=True, seed=seed, bounds=bounds)
    transfer = transferability(clone, reference, x, y, attack=attack, require_source_correct=False)
    return CloneMeasurement(
        accuracy=float((clone_class == y).double().mean()),
        reference_accuracy=transfer.target_accuracy,
        agreement=float((clone_class == reference_class).double().mean()),
        transfer_rate=transfer.target_fooled_rate,
        clone_attack_success=transfer.source_success_rate,
        n_test=x.shape[0],
        n_attacked=transfer.n_attacked,
        n_clone_fooled=transfer.n_source_fooled,
        n_transferred=transfer.n_target_fooled,
        eps=eps,
        norm=norm,
        steps=steps,
    )


def _trainer(trainer: Any, epochs: int, batch_size: int, lr: float) -> Trainer:
    """The given trainer, or train_classifier on soft targets with validated settings."""
    if trainer is not None:
        if not callable(trainer):
            raise InvalidTypeError(
                "trainer must be a callable trainer(model, x, targets, seed) -> model, "
                f"got {describe(trainer)}"
            )
        return trainer  # type: ignore[no-any-return]
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)

    def soft_cross_entropy(model: nn.Module, x: Tensor, targets: Tensor, seed: int) -> nn.Module:
        return train_classifier(
            model, x, targets, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
        )

    return soft_cross_entropy


def _train(train: Trainer, clone: nn.Module, x: Tensor, targets: Tensor, seed: int) -> nn.Module:
    trained = train(clone, x, targets, seed)
    if not isinstance(trained, nn.Module):
        raise InvalidTypeError(
            f"trainer must return the trained torch.nn.Module, returned {describe(trained)}"
        )
    return trained.eval()


def _initial_clone(architecture: Any, seed: int, queries: Tensor) -> nn.Module:
    """A deep copy of a module, or a fresh one built under a fork of the RNG seeded with seed."""
    if isinstance(architecture, nn.Module):
        clone = copy.deepcopy(architecture)
    elif callable(architecture):
        clone = build_seeded(architecture, seed, name="architecture")
    else:
        raise InvalidTypeError(
            "architecture must be a torch.nn.Module or a callable returning one, "
            f"got {describe(architecture)}"
        )
    check_model_matches_inputs(clone, queries, name="architecture")
    return clone


def _output_width(clone: nn.Module, x: Tensor) -> int:
    """The clone's number of logits, from one input in eval mode (no statistics change)."""
    modes = [(module, module.training) for module in clone.modules()]
    try:
        clone.eval()
        with torch.no_grad():
            return int(check_logits(clone(x), x.shape[0], name="architecture").shape[1])
    finally:
        for module, training in modes:
            module.training = training


def _check_width(width: int, num_classes: int) -> None:
    if width != num_classes:
        raise ModelError(
            f"architecture must output one logit per victim class ({num_classes}), outputs {width}"
        )


def _least(*limits: int | None) -> int | None:
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def _subset(x: Tensor, size: int | None, generator: torch.Generator) -> Tensor:
    """``x`` if it has at most ``size`` rows, else a seeded random subset in original order."""
    if size is None or x.shape[0] <= size:
        return x
    chosen = torch.randperm(x.shape[0], generator=generator)[:size].sort().values
    return x[chosen.to(x.device)]
