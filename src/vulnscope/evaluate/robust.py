"""Robust accuracy as a function of the perturbation budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import (
    check_bool,
    check_epsilons,
    check_inputs,
    check_int,
    check_labels,
    check_model,
)
from vulnscope.attacks.base import Attack
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate._chunks import map_chunks
from vulnscope.evaluate.accuracy import predict
from vulnscope.models.state import preserved_model_state

__all__ = ["RobustAccuracyCurve", "robust_accuracy"]


@dataclass(frozen=True)
class RobustAccuracyCurve:
    """Robust accuracy at each budget.

    Attributes:
        epsilons: (E,) budgets, in the order they were asked for.
        accuracy: (E,) fraction of samples classified correctly everywhere the attack
            looked inside the eps-ball.
        success: (E, N) bool: sample n is misclassified somewhere in the ball of
            ``epsilons[e]`` (clean mistakes included). Non-decreasing in eps.
        clean_accuracy: accuracy on the unperturbed inputs.
        norm: the norm of the balls.
        attack: the attack's ``repr`` at its first budget.
        forward_evals: model evaluations, counted per sample, over all budgets.
        gradient_evals: backward passes, counted per sample, over all budgets.

    """

    epsilons: Tensor
    accuracy: Tensor
    success: Tensor
    clean_accuracy: float
    norm: str
    attack: str
    forward_evals: int
    gradient_evals: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the per-sample matrix)."""
        return {
            "attack": self.attack,
            "norm": self.norm,
            "epsilons": [float(e) for e in self.epsilons],
            "robust_accuracy": [float(a) for a in self.accuracy],
            "clean_accuracy": self.clean_accuracy,
            "forward_evals": self.forward_evals,
            "gradient_evals": self.gradient_evals,
        }


@dataclass(frozen=True)
class _SweepChunk:
    """One chunk's sweep: (L, B) success on the positive budgets, (B,) clean mistakes."""

    success: Tensor
    broken: Tensor
    forward_evals: int
    gradient_evals: int

    def to_json(self) -> dict[str, Any]:
        return {"forward_evals": self.forward_evals, "gradient_evals": self.gradient_evals}

    def tensors(self) -> tuple[Tensor, ...]:
        return self.success, self.broken

    @classmethod
    def decode(cls, data: dict[str, Any], tensors: tuple[Tensor, ...]) -> _SweepChunk:
        success, broken = tensors
        return cls(success, broken, int(data["forward_evals"]), int(data["gradient_evals"]))


def robust_accuracy(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    attack: Attack,
    epsilons: Sequence[float] | Tensor,
    batch_size: int | None = None,
    early_stop: bool = True,
    shard: bool = True,
) -> RobustAccuracyCurve:
    """Robust accuracy of ``model`` under ``attack`` at each budget in ``epsilons``.

    Much cheaper than one attack per budget (see :meth:`Attack.sweep`): a sample broken
    inside one ball is broken inside every larger ball, so only the samples still robust
    are attacked at the next budget, and attacks that can climb all budgets in one pass
    (PGD, BIM) do. Samples the model already misclassifies are never attacked. With
    ``early_stop=True`` the attack also stops working on a sample at its first
    adversarial iterate (for attacks that have an ``early_stop`` hyperparameter), which
    finds at least as many adversarial examples as classic semantics.

    The samples go to the attack in fixed chunks of ``batch_size`` by index. Under
    ``torchrun`` (or any initialised ``torch.distributed`` group of several ranks) with
    ``shard``, the chunks are spread over the ranks and every rank returns the whole
    curve, equal to one process's.

    Args:
        model: maps inputs (N, ...) to logits (N, C).
        x: inputs (N, ...), inside the attack's bounds.
        y: true labels (N,).
        attack: an untargeted attack: one with a budget, whose ``eps`` is replaced by each
            budget, or a minimal attack (DeepFool, C&W, FAB, ...), run once without a cap.
        epsilons: budgets in the attack's norm, any order; 0 gives clean accuracy.
        batch_size: samples per attack call; ``None`` for all at once.
        early_stop: switch the attack's early stopping on.
        shard: share the chunks among the ranks of a ``torch.distributed`` process group
            (joining the one ``torchrun`` describes); False runs every chunk here.

    Returns:
        :class:`RobustAccuracyCurve`.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import PGD
        >>> from vulnscope.evaluate import robust_accuracy
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
        >>> curve = robust_accuracy(model, x, y, attack=PGD(steps=5), epsilons=[0.0, 0.5])
        >>> bool(curve.accuracy[1] <= curve.accuracy[0])
        True

    """
    model = check_model(model)
    if not isinstance(attack, Attack):
        raise InvalidTypeError(f"attack must be a vulnscope Attack, got {type(attack).__name__}")
    if attack.targeted:
        raise InvalidArgumentError("attack must be untargeted: robust accuracy counts any mistake")
    budgets = check_epsilons(epsilons)
    x = check_inputs(x, bounds=attack.bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    size = x.shape[0] if batch_size is None else check_int(batch_size, "batch_size")
    if check_bool(early_stop, "early_stop") and "early_stop" in attack.get_params():
        attack = attack.replace(early_stop=True)
    ladder = sorted({eps for eps in budgets if eps > 0})
    chunks = torch.arange(x.shape[0], device=x.device).split(size)

    def compute(k: int) -> _SweepChunk:
        rows = chunks[k]
        if not ladder:  # only eps = 0: clean accuracy
            with preserved_model_state(model):
                wrong = predict(model, x[rows], batch_size=size) != y[rows]
            none = torch.zeros(0, rows.numel(), dtype=torch.bool, device=x.device)
            return _SweepChunk(none, wrong, 0, 0)
        sweep = attack.sweep(model, x[rows], y[rows], epsilons=ladder)
        return _SweepChunk(
            sweep.success, ~sweep.clean_correct, sweep.forward_evals, sweep.gradient_evals
        )

    pieces = map_chunks(
        len(chunks),
        compute,
        decode=_SweepChunk.decode,
        shard=check_bool(shard, "shard"),
        device=x.device,
    )
    success_on_ladder = torch.cat([piece.success for piece in pieces], dim=1)
    broken = torch.cat([piece.broken for piece in pieces])
    forward_evals = sum(piece.forward_evals for piece in pieces)
    gradient_evals = sum(piece.gradient_evals for piece in pieces)
    clean_accuracy = float((~broken).double().mean())
    rows = [success_on_ladder[ladder.index(eps)] if eps > 0 else broken for eps in budgets]
    success = torch.stack(rows)
    return RobustAccuracyCurve(
        epsilons=torch.tensor(budgets, dtype=torch.float64),
        accuracy=1.0 - success.double().mean(dim=1).cpu(),
        success=success,
        clean_accuracy=clean_accuracy,
        norm=attack.norm,
        attack=repr(attack.replace(eps=min(budgets))),
        forward_evals=forward_evals,
        gradient_evals=gradient_evals,
    )
