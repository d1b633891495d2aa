"""The attack contract: one call path owned by the base class, one ``run`` per attack.

Modelled on Foolbox 3's ``Attack.__call__`` (Rauber et al. 2020): :meth:`Attack.__call__`
is final. It validates the inputs, guards the model's state, counts the model evaluations,
calls the attack's own :meth:`Attack.run`, projects the result onto the threat model, and
scores success by running the model on exactly the tensor it returns.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, final

import torch
from torch import Tensor

from vulnscope._validation import (
    NORMS,
    check_bool,
    check_bounds,
    check_eps,
    check_inputs,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_norm,
    check_seed,
)
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.norms import lp_norm, project
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.checks import warn_if_probabilities, warn_if_training_mode
from vulnscope.models.state import preserved_model_state

__all__ = ["Attack", "AttackResult", "CountingModel", "make_generator"]


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial inputs, shape (N, ...), inside the bounds (and the eps-ball for
            attacks with a budget).
        success: (N,) bool, computed by running the model on ``x_adv``: misclassified
            (untargeted) or classified as the target (targeted). A sample the model already
            gets wrong counts as a success of an untargeted attack.
        norms: (N,) size of ``x_adv - x`` in the attack's norm.
        norm: the norm of ``norms``: ``"linf"``, ``"l2"`` or ``"l1"``.
        forward_evals: model evaluations the attack used, counted per sample (a forward
            pass on a batch of 100 counts 100), including those it differentiated.
        gradient_evals: backward passes through the model, counted per sample.

    """

    x_adv: Tensor
    success: Tensor
    norms: Tensor
    norm: str
    forward_evals: int
    gradient_evals: int

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded."""
        return float(self.success.float().mean())


class CountingModel:
    """Wraps a model and counts its forward and backward evaluations, per sample.

    Attacks receive their model through this wrapper, so the counts in
    :class:`AttackResult` need no bookkeeping in the attacks themselves.
    """

    def __init__(self, model: Callable[[Tensor], Tensor]) -> None:
        self.model = model
        self.forward_evals = 0
        self.gradient_evals = 0

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of ``x`` (N, ...) -> (N, C)."""
        logits = self.model(x)
        self.forward_evals += x.shape[0]
        if logits.requires_grad:
            logits.register_hook(self._count_backward)
        return logits

    def _count_backward(self, grad: Tensor) -> None:
        self.gradient_evals += grad.shape[0]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (fresh entropy when ``None``)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class Attack(abc.ABC):
    """Base class of every attack.

    Subclasses declare their hyperparameters as keyword-only constructor arguments, store
    them under the same names, and implement :meth:`run`. Calling the attack runs
    :meth:`__call__`, which subclasses do not override.

    Args:
        norm: the threat model's norm, one of ``supported_norms``.
        eps: the perturbation budget in that norm; ``None`` for attacks that minimise the
            perturbation instead of working inside a budget.
        targeted: if True, push each input towards ``target`` instead of away from ``y``.
        bounds: ``(low, high)`` bounds of valid inputs.
        seed: seed of the attack's randomness; the same seed gives the same result.

    """

    supported_norms: ClassVar[tuple[str, ...]] = NORMS
    requires_eps: ClassVar[bool] = True

    def __init__(
        self,
        *,
        norm: str,
        eps: float | None,
        targeted: bool,
        bounds: tuple[float, float],
        seed: int | None,
    ) -> None:
        self.norm = check_norm(norm, allowed=self.supported_norms)
        self.eps = None if eps is None else check_eps(eps)
        self.targeted = check_bool(targeted, "targeted")
        self.bounds = check_bounds(bounds)
        self.seed = check_seed(seed)

    def budget(self) -> float:
        """The perturbation budget ``eps``; for use inside :meth:`run` of budgeted attacks."""
        if self.eps is None:
            raise InvalidArgumentError(f"eps is not set: construct {type(self).__name__}(eps=...)")
        return self.eps

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as stored."""
        names = [
            name
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        return {name: getattr(self, name) for name in names}

    def replace(self, **changes: Any) -> Self:
        """A copy of this attack with some hyperparameters changed, e.g. ``replace(eps=0.1)``."""
        params = self.get_params()
        unknown = sorted(set(changes) - set(params))
        if unknown:
            raise InvalidArgumentError(
                f"{type(self).__name__} has no hyperparameter {unknown[0]!r}; "
                f"it has {sorted(params)}"
            )
        return type(self)(**{**params, **changes})

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @final
    def __call__(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` at the inputs ``x`` with true labels ``y``.

        Args:
            model: maps inputs (N, ...) to logits (N, C); usually an ``nn.Module`` in eval
                mode. Its parameters, buffers, mode flags and ``requires_grad`` are left as
                they were found.
            x: inputs, floating, shape (N, ...), inside ``bounds``. Never modified.
            y: true labels, integer, shape (N,).
            target: target labels (N,), required when the attack is targeted.

        Returns:
            An :class:`AttackResult`.

        """
        model = check_model(model)
        if self.requires_eps and self.eps is None:
            raise InvalidArgumentError(
                f"eps is not set: construct {type(self).__name__}(eps=...) or pass the attack "
                "to robust_accuracy(..., epsilons=[...])"
            )
        x = check_inputs(x, bounds=self.bounds)
        y = check_labels(y, n=x.shape[0], device=x.device)
        if self.targeted:
            if target is None:
                raise InvalidArgumentError(
                    "target is required: the attack was constructed with targeted=True"
                )
            target = check_labels(target, n=x.shape[0], device=x.device, name="target")
        elif target is not None:
            raise InvalidArgumentError(
                "target is only used by targeted attacks: construct the attack with targeted=True"
            )
        check_model_matches_inputs(model, x)
        with preserved_model_state(model), torch.inference_mode(False):
            warn_if_training_mode(model)
            x = x.detach().clone()
            with torch.no_grad():
                logits = check_logits(model(x), x.shape[0])
            check_labels_in_range(y, logits.shape[1])
            if target is not None:
                check_labels_in_range(target, logits.shape[1], name="target")
            warn_if_probabilities(logits)
            counting = CountingModel(model)
            with torch.enable_grad():
                x_adv = self.run(
                    counting, x, y, target=target, generator=make_generator(self.seed, x.device)
                )
            if x_adv.shape != x.shape:
                raise RuntimeError(
                    f"{type(self).__name__}.run returned shape {tuple(x_adv.shape)} "
                    f"for inputs of shape {tuple(x.shape)}"
                )
            x_adv = x_adv.detach().to(x.dtype)
            if self.eps is not None:
                x_adv = project(x, x_adv, norm=self.norm, eps=self.eps, bounds=self.bounds)
            else:
                x_adv = x_adv.clamp(*self.bounds)
            with torch.no_grad():
                success = is_adversarial(model(x_adv), y, target)
        return AttackResult(
            x_adv=x_adv,
            success=success,
            norms=lp_norm(x_adv - x, self.norm),
            norm=self.norm,
            forward_evals=counting.forward_evals,
            gradient_evals=counting.gradient_evals,
        )

    @abc.abstractmethod
    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """The attack itself, on validated inputs; the base class projects what it returns.

        Args:
            model: the model, wrapped to count evaluations; its parameters do not require
                gradients, so a backward pass yields input gradients only.
            x: inputs (N, ...), a private copy.
            y: true labels (N,), int64.
            target: target labels (N,) when targeted, else ``None``.
            generator: the attack's only source of randomness, seeded from ``seed``.

        Returns:
            Adversarial inputs, shape (N, ...).

        """
