"""The attack contract: one call path owned by the base class, one ``run`` per attack.

Modelled on Foolbox 3's ``Attack.__call__`` (Rauber et al. 2020): :meth:`Attack.__call__`
is final. It validates the inputs, guards the model's state, counts the model evaluations,
calls the attack's own :meth:`Attack.run`, projects the result onto the threat model, and
scores success by running the model on exactly the tensor it returns.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Self, final

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import (
    NORMS,
    check_bool,
    check_bounds,
    check_eps,
    check_epsilons,
    check_inputs,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_model_matches_inputs,
    check_norm,
    check_seed,
)
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial
from vulnscope.attacks.norms import lp_norm, project
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.checks import (
    is_batch_independent,
    warn_if_probabilities,
    warn_if_training_mode,
)
from vulnscope.models.state import preserved_model_state

__all__ = ["Attack", "AttackResult", "CountingModel", "Sweep", "make_generator"]


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
        changed_fraction: (N,) fraction of the input features that ``x_adv`` changes (the
            L0 size as a fraction; the figure sparse attacks such as JSMA report).

    """

    x_adv: Tensor
    success: Tensor
    norms: Tensor
    norm: str
    forward_evals: int
    gradient_evals: int
    changed_fraction: Tensor

    @property
    def success_rate(self) -> float:
        """Fraction of samples on which the attack succeeded."""
        return float(self.success.float().mean())


@dataclass(frozen=True)
class Sweep:
    """Success of an attack at several budgets.

    Attributes:
        success: (E, N) bool: sample n is misclassified somewhere inside budget e
            (non-decreasing in e; a sample the model already gets wrong is broken at
            every budget).
        clean_correct: (N,) bool: the model classifies the unperturbed sample correctly.
        forward_evals: model evaluations the attack used, counted per sample.
        gradient_evals: backward passes, counted per sample.

    """

    success: Tensor
    clean_correct: Tensor
    forward_evals: int
    gradient_evals: int


class _Session(NamedTuple):
    model: CountingModel
    x: Tensor
    y: Tensor
    target: Tensor | None
    generator: torch.Generator
    clean_logits: Tensor


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
    requires_eps: bool = True
    """Whether the attack needs a budget. A *minimal* attack (DeepFool, C&W, FAB, ...)
    sets it to False: it searches for the smallest adversarial perturbation, and an
    ``eps`` it is given is a cap: the result is projected onto the eps-ball."""
    gradient_free: ClassVar[bool] = False
    """True for attacks that only query the model's outputs and never call backward."""
    takes_start: ClassVar[bool] = False
    """True for attacks that can start from given points (:meth:`run_from`), as an
    adaptive evaluation starts them from what broke other points or a smaller budget."""

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

    @contextmanager
    def _session(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        *,
        needs_eps: bool = True,
    ) -> Iterator[_Session]:
        """Validate the inputs, guard the model's state, and set up counting and randomness."""
        model = check_model(model)
        if needs_eps and self.requires_eps and self.eps is None:
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
            stochastic = warn_if_training_mode(model, stacklevel=5)
            x = x.detach().clone()
            with torch.no_grad():
                logits = check_logits(model(x), x.shape[0])
            check_labels_in_range(y, logits.shape[1])
            if target is not None:
                check_labels_in_range(target, logits.shape[1], name="target")
            warn_if_probabilities(logits, stacklevel=5)
            counting = CountingModel(
                model, deterministic=not stochastic, batch_independent=is_batch_independent(model)
            )
            with torch.enable_grad():
                generator = make_generator(self.seed, x.device)
                yield _Session(counting, x, y, target, generator, logits)

    @final
    def __call__(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        start: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``model`` at the inputs ``x`` with true labels ``y``.

        Args:
            model: maps inputs (N, ...) to logits (N, C); usually an ``nn.Module`` in eval
                mode. Its parameters, buffers, mode flags and ``requires_grad`` are left as
                they were found.
            x: inputs, floating, shape (N, ...), inside ``bounds``. Never modified.
            y: true labels, integer, shape (N,).
            target: target labels (N,), required when the attack is targeted.
            start: (N, ...) where to start instead of the attack's own starting points
                (its first restart; later ones start as usual), for attacks with
                ``takes_start``; projected onto the ball and the bounds first.

        Returns:
            An :class:`AttackResult`.

        """
        with self._session(model, x, y, target) as session:
            if start is None:
                x_adv = self.run(
                    session.model,
                    session.x,
                    session.y,
                    target=session.target,
                    generator=session.generator,
                )
            else:
                x_adv = self.run_from(
                    session.model,
                    session.x,
                    session.y,
                    self._check_start(start, session.x),
                    target=session.target,
                    generator=session.generator,
                )
            x = session.x
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
                success = is_adversarial(session.model.model(x_adv), session.y, session.target)
        delta = x_adv - x
        return AttackResult(
            x_adv=x_adv,
            success=success,
            norms=lp_norm(delta, self.norm),
            norm=self.norm,
            forward_evals=session.model.forward_evals,
            gradient_evals=session.model.gradient_evals,
            changed_fraction=lp_norm(delta, "l0") / max(delta[0].numel(), 1),
        )

    @final
    def sweep(
        self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, epsilons: Sequence[float]
    ) -> Sweep:
        """Success of this untargeted attack at each budget, exploiting that balls are nested.

        An adversarial example found inside a ball lies inside every larger ball, so a
        sample broken at one budget is broken at every larger one and is not attacked
        again; samples the model already misclassifies are not attacked at all. Attacks
        with a faster way to climb the budgets (see :meth:`run_curve`) use it; a minimal
        attack runs once without a cap, and a sample counts as broken at every budget at
        least as large as the perturbation it found; the others are called once per
        budget on the samples still robust.

        Args:
            model: maps inputs (N, ...) to logits (N, C).
            x: inputs (N, ...), inside ``bounds``.
            y: true labels (N,).
            epsilons: budgets, in increasing order, each > 0.

        Returns:
            :class:`Sweep` with ``success`` of shape (E, N).

        """
        budgets = check_epsilons(epsilons)
        if any(b <= 0 for b in budgets) or budgets != sorted(set(budgets)):
            raise InvalidArgumentError(f"epsilons must increase strictly from > 0, got {budgets}")
        if self.targeted:
            raise InvalidArgumentError("sweep needs an untargeted attack")
        if not self.requires_eps:
            return self._sweep_minimal(model, x, y, budgets)
        with self._session(model, x, y, None, needs_eps=False) as session:
            correct = session.clean_logits.argmax(dim=1) == session.y
            broken = (~correct).expand(len(budgets), -1).clone()
            robust = correct.nonzero()[:, 0]
            fast = None
            if robust.numel() > 0:
                fast = self.run_curve(
                    session.model,
                    session.x[robust],
                    session.y[robust],
                    epsilons=budgets,
                    generator=session.generator,
                )
            counts = session.model
        if fast is not None:
            broken[:, robust] = fast
            return Sweep(broken, correct, counts.forward_evals, counts.gradient_evals)
        forward_evals = gradient_evals = 0
        for level, eps in enumerate(budgets):
            robust = (~broken[level]).nonzero()[:, 0]
            if robust.numel() == 0:
                break
            result = self.replace(eps=eps)(model, x[robust], y[robust])
            broken[level:, robust[result.success]] = True
            forward_evals += result.forward_evals
            gradient_evals += result.gradient_evals
        return Sweep(broken, correct, forward_evals, gradient_evals)

    def _sweep_minimal(
        self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, budgets: list[float]
    ) -> Sweep:
        """One uncapped run of a minimal attack; broken at each budget its norm fits in."""
        with self._session(model, x, y, None, needs_eps=False) as session:
            correct = session.clean_logits.argmax(dim=1) == session.y
        broken = (~correct).expand(len(budgets), -1).clone()
        robust = correct.nonzero()[:, 0]
        if robust.numel() == 0:
            return Sweep(broken, correct, 0, 0)
        result = self.replace(eps=None)(model, x[robust], y[robust])
        limits = torch.tensor(budgets, dtype=result.norms.dtype, device=result.norms.device)
        inside = result.success[None, :] & (result.norms[None, :] <= limits[:, None])
        broken[:, robust] = inside
        return Sweep(broken, correct, result.forward_evals, result.gradient_evals)

    def run_curve(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        epsilons: list[float],
        generator: torch.Generator,
    ) -> Tensor | None:
        """Optional fast path for :meth:`sweep`: success (E, N) at increasing budgets.

        The default returns ``None``, and :meth:`sweep` calls the attack once per budget.
        An attack overrides it when it can climb all budgets at once; it must then give
        the same answer as one early-stopping run per budget on the samples still robust.
        """
        return None

    def _check_start(self, start: Any, x: Tensor) -> Tensor:
        """``start`` checked against ``x`` and projected onto the threat model."""
        if not self.takes_start:
            raise InvalidArgumentError(
                f"start: {type(self).__name__} takes no starting points (only attacks with "
                "takes_start, such as APGD, do)"
            )
        if not isinstance(start, Tensor) or start.shape != x.shape:
            got = tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__
            raise InvalidArgumentError(
                f"start must be a tensor shaped like the inputs {tuple(x.shape)}, got {got}"
            )
        if not torch.isfinite(start).all():
            raise InvalidArgumentError("start holds NaN or infinite values")
        start = start.detach().to(device=x.device, dtype=x.dtype)
        return project(x, start, norm=self.norm, eps=self.budget(), bounds=self.bounds)

    def run_from(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        start: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """:meth:`run` with the first restart at ``start`` (attacks with ``takes_start``).

        Args:
            model: as for :meth:`run`.
            x: as for :meth:`run`.
            y: as for :meth:`run`.
            start: (N, ...) starting points inside the ball and the bounds.
            target: as for :meth:`run`.
            generator: as for :meth:`run`.

        """
        raise NotImplementedError(f"{type(self).__name__} takes no starting points")

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
