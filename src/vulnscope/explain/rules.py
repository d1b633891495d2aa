"""LRP rules: how one linear layer (dense or convolution) passes relevance back.

Each rule is written as a *modified forward pass* whose gradient, times the layer's input,
is the rule's relevance (the trick of zennit, Anders et al. 2021): if the relevance at a
layer's output is ``R = z * g`` (``z`` the output, ``g`` the incoming gradient), a layer
that returns ``z`` but sends back ``g_in = W'^T (g * z / z')``, with ``z' = W' x + b'`` the
rule's modified pre-activation, leaves ``x * g_in = x * W'^T (R / z')`` at its input: the
rule's relevance. One backward pass then propagates relevance through the whole network,
at the cost of one gradient (plus one modified forward per layer for γ and z⁺). Rules
from Montavon et al. 2019, "Layer-wise relevance propagation: an overview"; zᴮ from
Montavon et al. 2017, "Explaining nonlinear classification decisions with deep Taylor
decomposition"; the flat rule from Lapuschkin et al. 2019.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional

__all__ = [
    "INPUT_RULES",
    "LAYER_RULES",
    "InputRule",
    "LinearMap",
    "Rule",
    "make_rule",
]

# Added to a modified pre-activation (with its sign, 0 counting as positive) before
# dividing by it, as Captum does: only exact zeros are affected.
STABILIZER = 1e-9


@dataclass(frozen=True)
class LinearMap:
    """A dense or convolutional layer with the parameters LRP uses (BatchNorm merged in).

    Attributes:
        name: dotted name of the module in the model.
        module: the ``nn.Linear`` or ``nn.Conv2d`` itself.
        weight: (out, in) or (out, in / groups, kh, kw) weight.
        bias: (out,) bias or ``None``.

    """

    name: str
    module: nn.Module
    weight: Tensor
    bias: Tensor | None

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's map with other parameters (same stride, padding...) on ``x``."""
        if isinstance(self.module, nn.Conv2d):
            conv = self.module
            return functional.conv2d(
                x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups
            )
        return functional.linear(x, weight, bias)

    def __call__(self, x: Tensor) -> Tensor:
        """The layer's own output ``W x + b``."""
        return self.apply(x, self.weight, self.bias)


class _Relay(torch.autograd.Function):
    """Returns ``value``; sends ``grad * ratio`` back to ``surrogate`` (nothing to ``value``)."""

    @staticmethod
    def forward(ctx: Any, surrogate: Tensor, ratio: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(ratio)
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None, None


def _stabilized(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)``, with sign(0) = 1."""
    return z + torch.where(z >= 0, epsilon, -epsilon)


def _relay(surrogate: Tensor, value: Tensor, denominator: Tensor) -> Tensor:
    """``value`` forward; the gradient ``g * value / denominator`` into ``surrogate``."""
    ratio = value.detach() / denominator.detach()
    return _Relay.apply(surrogate, ratio, value.detach())  # type: ignore[no-any-return]


def _modified(layer: LinearMap, x: Tensor, change: Callable[[Tensor], Tensor]) -> Tensor:
    """``layer`` on ``x`` with ``change`` applied to its weight and bias."""
    bias = None if layer.bias is None else change(layer.bias)
    return layer.apply(x, change(layer.weight), bias)


class Rule(abc.ABC):
    """A rule for any linear layer: its output, with the rule's gradient behind it."""

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        """``layer(x)`` whose gradient times ``x`` is this rule's relevance at ``x``."""


class ZeroRule(Rule):
    """LRP-0 (Bach et al. 2015): ``R_in = x * W^T (R / z)``, the plain gradient times input."""

    name = "zero"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        return layer(x)


@dataclass(frozen=True)
class EpsilonRule(Rule):
    """LRP-ε: ``R_in = x * W^T (R / (z + ε sign z))``; ε absorbs weak, noisy relevance."""

    epsilon: float
    name = "epsilon"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        z = layer(x)
        return _relay(z, z, _stabilized(z, self.epsilon))


@dataclass(frozen=True)
class GammaRule(Rule):
    """LRP-γ: the weights and bias ``w + γ w⁺`` favour positive contributions."""

    gamma: float
    name = "gamma"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = layer(x)
        modified = _modified(layer, x, lambda p: p + self.gamma * p.clamp(min=0))
        return _relay(modified, z, _stabilized(modified, STABILIZER))


class ZPlusRule(Rule):
    """z⁺ (the γ → ∞ limit, no bias): ``R_in = x * W⁺^T (R / W⁺ x)``; for inputs >= 0."""

    name = "zplus"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = layer(x)
        positive = layer.apply(x, layer.weight.clamp(min=0), None)
        return _relay(positive, z, _stabilized(positive, STABILIZER))


class InputRule(abc.ABC):
    """A rule for the first linear layer, whose relevance may involve more than ``x``."""

    name: ClassVar[str]

    @abc.abstractmethod
    def __call__(
        self, layer: LinearMap, x: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``layer(x)`` and the leaves ``t`` whose ``sum(t * grad t)`` is the relevance at ``x``.

        ``low`` and ``high`` are the input bounds, shaped like ``x``.
        """


class ZBRule(InputRule):
    """zᴮ (Montavon et al. 2017): deep Taylor decomposition for inputs in a box ``[l, h]``.

    ``R_in = (x W - l W⁺ - h W⁻)^T (R / (x W - l W⁺ - h W⁻))`` per input, i.e. the gradient
    of ``W x - W⁺ l - W⁻ h`` with respect to ``x``, ``l`` and ``h``, times each.
    """

    name = "zb"

    def __call__(
        self, layer: LinearMap, x: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        low = low.detach().requires_grad_()
        high = high.detach().requires_grad_()
        with torch.no_grad():
            z = layer(x)
        weight = layer.weight
        surrogate = (
            layer.apply(x, weight, None)
            - layer.apply(low, weight.clamp(min=0), None)
            - layer.apply(high, weight.clamp(max=0), None)
        )
        return _relay(surrogate, z, _stabilized(surrogate, STABILIZER)), (x, low, high)


class FlatRule(InputRule):
    """Flat (Lapuschkin et al. 2019): each output's relevance spread evenly over its inputs."""

    name = "flat"

    def __call__(
        self, layer: LinearMap, x: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        ones = torch.ones_like(x, requires_grad=True)
        with torch.no_grad():
            z = layer(x)
        counts = layer.apply(ones, torch.ones_like(layer.weight), None)
        return _relay(counts, z, _stabilized(counts, STABILIZER)), (ones,)


LAYER_RULES: tuple[str, ...] = ("zero", "epsilon", "gamma", "zplus")
"""Rules for any linear layer."""

INPUT_RULES: dict[str, InputRule] = {"zb": ZBRule(), "flat": FlatRule()}
"""Rules for the first linear layer only (they use the input bounds or ignore the input)."""


def make_rule(name: str, *, epsilon: float, gamma: float) -> Rule:
    """The layer rule called ``name``, one of :data:`LAYER_RULES`."""
    rules: dict[str, Callable[[], Rule]] = {
        "zero": ZeroRule,
        "epsilon": lambda: EpsilonRule(epsilon),
        "gamma": lambda: GammaRule(gamma),
        "zplus": ZPlusRule,
    }
    return rules[name]()
