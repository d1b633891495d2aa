r"""Provable training: minimise the cross-entropy of sound worst-case logits.

A certificate (:mod:`vulnscope.certify`) gives, for every input ``x`` with label ``y``
and every class ``j``, a lower bound :math:`\underline m_j` of the margin
:math:`z_y - z_j` over the whole eps-ball. The *worst-case logits*

.. math:: \hat z_j = -\underline m_j, \qquad \hat z_y = 0,

dominate the logits of every point of the ball shifted to 0 at the label
(:math:`z_j - z_y \le \hat z_j`). The cross-entropy depends only on those differences and
grows with each, so :math:`\ell(\hat z, y)` upper-bounds the cross-entropy anywhere in the
ball (Wong and Kolter 2018). It is differentiable in the weights: training on it makes the
network easy to certify, its bounds tightening while its margins grow.

- Wong and Kolter (2018), "Provable defenses against adversarial examples via the convex
  outer adversarial polytope": the bound of the dual network (``method="dual"``), the
  robust loss alone, with eps grown from 0 over the first epochs.
- Gowal et al. (2018), "On the effectiveness of interval bound propagation for training
  verifiably robust models": interval bounds (``method="ibp"``), the loss
  :math:`\kappa\,\ell(f(x), y) + (1 - \kappa)\,\ell(\hat z, y)` with :math:`\kappa`
  going from 1 to 0.5 while eps ramps from 0 to its target after a warm-up.
- Zhang et al. (2020), "Towards stable and efficient training of verifiably robust
  neural networks" (CROWN-IBP, ``method="crown-ibp"``): the worst-case logits mix a
  CROWN bound computed from interval pre-activation bounds with the interval bound,
  :math:`\underline m = \beta\,\underline m_{\mathrm{CROWN\text{-}IBP}} + (1 - \beta)\,
  \underline m_{\mathrm{IBP}}`, :math:`\beta` going from 1 to 0 and :math:`\kappa`
  from 1 to 0 during the ramp.

The bounds are those of :func:`vulnscope.certify.propagation.margin_bounds`; nothing is
propagated here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_bounds, check_choice, check_real, describe
from vulnscope.certify.graph import Graph, read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import margin_bounds
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "PROVABLE_METHODS",
    "ProvableTraining",
    "RampSchedule",
    "ScheduleValues",
    "crown_ibp_training",
    "ibp_training",
    "robust_cross_entropy",
    "wong_kolter_training",
    "worst_case_logits",
]

PROVABLE_METHODS = ("ibp", "crown-ibp", "dual")
"""Bounds :class:`ProvableTraining` trains on (``"dual"``: Wong and Kolter's)."""


@dataclass(frozen=True)
class RampSchedule:
    """A linear ramp from 0 to 1 over training, in (fractional) epochs.

    ``fraction(t)`` is 0 for ``t < warmup``, ``(t - warmup) / ramp`` during the ramp and 1
    after it; a ramp of length 0 jumps to 1 at the end of the warm-up.

    Attributes:
        warmup: epochs before the ramp starts, >= 0.
        ramp: epochs the ramp lasts, >= 0.

    """

    warmup: float = 0.0
    ramp: float = 0.0

    def __post_init__(self) -> None:
        check_real(self.warmup, "warmup", minimum=0.0)
        check_real(self.ramp, "ramp", minimum=0.0)

    def fraction(self, epoch: float) -> float:
        """How far the ramp has gone at ``epoch``, in [0, 1]."""
        if epoch < self.warmup:
            return 0.0
        if epoch >= self.warmup + self.ramp:
            return 1.0
        return (epoch - self.warmup) / self.ramp


@dataclass(frozen=True)
class ScheduleValues:
    """The scheduled hyperparameters at one point of training.

    Attributes:
        eps: radius of the ball the bounds hold on (0: no bound is computed).
        kappa: weight of the natural cross-entropy, in [0, 1].
        beta: weight of the CROWN-IBP bound against the IBP bound, in [0, 1] (only
            ``method="crown-ibp"`` uses it).

    """

    eps: float
    kappa: float
    beta: float


def worst_case_logits(margins: Tensor, y: Tensor) -> Tensor:
    """The logits ``-margins`` with 0 at the label: the worst case the bounds allow.

    Args:
        margins: (B, C) lower bounds of ``logit[y] - logit[j]`` (any value at ``j = y``,
            usually +inf).
        y: (B,) int64 labels.

    Returns:
        (B, C) worst-case logits.

    """
    at_label = F.one_hot(y, margins.shape[1]).bool()
    return (-margins).masked_fill(at_label, 0.0)


def robust_cross_entropy(margins: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of :func:`worst_case_logits`: an upper bound of the robust loss."""
    return F.cross_entropy(worst_case_logits(margins, y), y)


class ProvableTraining:
    r"""The provable-training objective for :func:`vulnscope.models.train_classifier`.

    At progress ``t`` (epochs, told by the training loop through :meth:`set_epoch`) with
    ``r = schedule.fraction(t)``: eps is ``r * eps``, :math:`\kappa` goes linearly from
    ``kappa_start`` to ``kappa_end`` and :math:`\beta` from 1 to 0, and the loss is

    .. math:: \kappa\,\ell(f(x), y) + (1 - \kappa)\,\ell(\hat z, y),

    with :math:`\hat z` the worst-case logits of the bounds at eps (no bound is computed
    while eps is 0 or :math:`\kappa` is 1). The model is read into a bound graph once
    (:func:`vulnscope.certify.graph.read_graph`); the graph uses the live parameters.
    Batch norm and dropout layers are refused there: in training mode their outputs
    have no certificate.

    Args:
        eps: the target L∞ radius, > 0.
        method: ``"ibp"``, ``"crown-ibp"`` or ``"dual"`` (Wong and Kolter).
        schedule: warm-up and ramp of eps, :math:`\kappa` and :math:`\beta`, in epochs.
        kappa_start: weight of the natural loss before the ramp, in [0, 1].
        kappa_end: weight of the natural loss after the ramp, in [0, 1].
        bounds: the input box, part of the input set, default ``(0, 1)``.

    Shape:
        x: (B, ...) inside ``bounds``; y: (B,) int64 labels; returns a scalar loss.

    """

    def __init__(
        self,
        *,
        eps: float,
        method: str = "ibp",
        schedule: RampSchedule | None = None,
        kappa_start: float = 1.0,
        kappa_end: float = 0.5,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
        self.method = check_choice(method, "method", PROVABLE_METHODS)
        if schedule is not None and not isinstance(schedule, RampSchedule):
            raise InvalidTypeError(f"schedule must be a RampSchedule, got {describe(schedule)}")
        self.schedule = RampSchedule() if schedule is None else schedule
        self.kappa_start = _check_weight(kappa_start, "kappa_start")
        self.kappa_end = _check_weight(kappa_end, "kappa_end")
        self.bounds = check_bounds(bounds)
        self.epoch_ = 0.0
        self._graphs: weakref.WeakKeyDictionary[nn.Module, Graph] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return (
            f"ProvableTraining(eps={self.eps!r}, method={self.method!r}, "
            f"schedule={self.schedule!r}, kappa_start={self.kappa_start!r}, "
            f"kappa_end={self.kappa_end!r})"
        )

    def set_epoch(self, epoch: float) -> None:
        """Set the training's progress in epochs (the schedule's clock), >= 0."""
        self.epoch_ = check_real(epoch, "epoch", minimum=0.0)

    def values(self, epoch: float | None = None) -> ScheduleValues:
        r"""eps, :math:`\kappa` and :math:`\beta` at ``epoch`` (default: the current one)."""
        at = self.epoch_ if epoch is None else check_real(epoch, "epoch", minimum=0.0)
        r = self.schedule.fraction(at)
        return ScheduleValues(
            eps=r * self.eps,
            kappa=self.kappa_start + r * (self.kappa_end - self.kappa_start),
            beta=1.0 - r,
        )

    def margins(self, model: nn.Module, x: Tensor, y: Tensor, values: ScheduleValues) -> Tensor:
        """(B, C) sound lower bounds of ``logit[y] - logit[j]`` on the ball of ``values.eps``.

        Differentiable with respect to the model's parameters.
        """
        graph = self._graph(model, x)
        inputs = input_set(x, norm="linf", eps=values.eps, bounds=self.bounds)
        if self.method != "crown-ibp" or values.beta == 0.0:
            method = "ibp" if self.method == "crown-ibp" else self.method
            return margin_bounds(graph, inputs, y, method=method)
        crown = worst_case_logits(margin_bounds(graph, inputs, y, method="crown-ibp"), y)
        if values.beta == 1.0:
            return -crown
        interval = worst_case_logits(margin_bounds(graph, inputs, y, method="ibp"), y)
        # mixed as finite worst-case logits: +inf margins at the label would give inf - inf
        return -(values.beta * crown + (1.0 - values.beta) * interval)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The minibatch loss (scalar) at the current point of the schedule."""
        del generator  # deterministic: the bounds draw nothing
        if y.is_floating_point():
            raise InvalidArgumentError(
                "provable training needs integer class labels y, got probability targets"
            )
        values = self.values()
        natural = F.cross_entropy(model(x), y) if values.kappa > 0.0 else None
        if values.eps == 0.0 or values.kappa == 1.0:
            return natural if natural is not None else F.cross_entropy(model(x), y)
        robust = robust_cross_entropy(self.margins(model, x, y, values), y)
        if natural is None:
            return robust
        return values.kappa * natural + (1.0 - values.kappa) * robust

    def _graph(self, model: nn.Module, x: Tensor) -> Graph:
        graph = self._graphs.get(model)
        if graph is None:
            graph = self._graphs[model] = read_graph(model, x[:1])
        return graph


def ibp_training(
    eps: float, *, warmup: float = 0.0, ramp: float = 0.0, kappa_end: float = 0.5
) -> ProvableTraining:
    r"""Gowal et al. (2018): interval bounds, :math:`\kappa` from 1 to ``kappa_end``."""
    return ProvableTraining(
        eps=eps,
        method="ibp",
        schedule=RampSchedule(warmup=warmup, ramp=ramp),
        kappa_start=1.0,
        kappa_end=kappa_end,
    )


def crown_ibp_training(
    eps: float, *, warmup: float = 0.0, ramp: float = 0.0, kappa_end: float = 0.0
) -> ProvableTraining:
    r"""Zhang et al. (2020): CROWN-IBP, :math:`\beta` from 1 to 0, :math:`\kappa` 1 to 0."""
    return ProvableTraining(
        eps=eps,
        method="crown-ibp",
        schedule=RampSchedule(warmup=warmup, ramp=ramp),
        kappa_start=1.0,
        kappa_end=kappa_end,
    )


def wong_kolter_training(eps: float, *, warmup: float = 0.0, ramp: float = 0.0) -> ProvableTraining:
    """Wong and Kolter (2018): the dual network's robust loss alone, eps ramped."""
    return ProvableTraining(
        eps=eps,
        method="dual",
        schedule=RampSchedule(warmup=warmup, ramp=ramp),
        kappa_start=0.0,
        kappa_end=0.0,
    )


def _check_weight(value: float, name: str) -> float:
    result = check_real(value, name, minimum=0.0)
    if result > 1.0:
        raise InvalidArgumentError(f"{name} must be in [0, 1], got {result}")
    return result
