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

    def transposed(self, grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        """``weight^T grad``: the gradient at ``x`` of ``apply(x, weight, ·)`` given ``grad``.

        Only the input's gradient is computed (no weight or bias gradient, no forward).
        """
        if isinstance(self.module, nn.Linear):
            return grad @ weight
        conv = self.module
        if isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str):
            mask = (True, False, False)
            return torch.ops.aten.convolution_backward(  # type: ignore[no-any-return]
                grad, x, weight, None, conv.stride, conv.padding, conv.dilation,
                False, (0, 0), conv.groups, mask,
            )[0]  # fmt: skip
        with torch.enable_grad():  # padding="same" or "valid": let autograd transpose
            leaf = x.detach().requires_grad_()
            (result,) = torch.autograd.grad(self.apply(leaf, weight, None), leaf, grad)
        return result


class _RuleLinear(torch.autograd.Function):
    """``layer(source)`` forward; ``W'^T (grad * z / z')`` to ``x``, ``z' = W' x + b'``.

    ``source`` is ``x`` except for the flat rule. ``z`` and ``z'`` are computed without
    autograd and the backward pass is one transposed product with ``W'``: what a rule
    costs beyond the gradient is the second forward product (none for ε) and a few
    elementwise passes.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        layer: LinearMap,
        weight: Tensor | None,
        bias: Tensor | None,
        stabilizer: float,
        source: Tensor,
    ) -> Tensor:
        z = layer(source)
        modified = z.clone() if weight is None else layer.apply(x, weight, bias)
        ctx.layer, ctx.weight = layer, layer.weight if weight is None else weight
        ctx.save_for_backward(x, torch.div(z, _stabilize(modified, stabilizer), out=modified))
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, ratio = ctx.saved_tensors
        return (ctx.layer.transposed(_scaled(ctx, ratio, grad), x, ctx.weight),) + (None,) * 5


def _rule_output(
    layer: LinearMap,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stabilizer: float,
    source: Tensor | None = None,
) -> Tensor:
    """``layer(source)`` whose gradient times ``x`` is ``x * W'^T (R / (W' x + b'))``.

    ``weight`` ``None``: ``W' x + b'`` is ``layer(x)`` itself (LRP-ε).
    """
    output = _RuleLinear.apply(x, layer, weight, bias, stabilizer, x if source is None else source)
    return output  # type: ignore[no-any-return]


class _ZBLinear(torch.autograd.Function):
    """zᴮ as one product: ``z`` forward, ``[W, -W⁺, -W⁻]^T (grad * z / zᴮ)`` to x, l, h."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: Tensor, high: Tensor, layer: LinearMap) -> Tensor:
        weight = layer.weight
        stacked = torch.cat([weight, -weight.clamp(min=0), -weight.clamp(max=0)], dim=1)
        leaves = torch.cat([x, low, high], dim=1)
        z = layer(x)
        ctx.layer, ctx.weight = layer, stacked
        modified = _stabilize(layer.apply(leaves, stacked, None), STABILIZER)
        ctx.save_for_backward(leaves, torch.div(z, modified, out=modified))
        return z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        leaves, ratio = ctx.saved_tensors
        grads = ctx.layer.transposed(_scaled(ctx, ratio, grad), leaves, ctx.weight)
        return (*grads.chunk(3, dim=1), None)


def _scaled(ctx: Any, ratio: Tensor, grad: Tensor) -> Tensor:
    """``grad * ratio``, written over ``ratio``: a large buffer less to allocate.

    The ratio is then spent, so the relay's backward runs once only (LRP propagates once).
    """
    if getattr(ctx, "spent", False):
        raise RuntimeError("an LRP relay's backward pass runs once only (no retain_graph)")
    ctx.spent = True
    return ratio.mul_(grad)


def _stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` in place, with sign(0) = sign(-0) = 1.

    ``z + 0.0`` turns -0 into +0 for ``copysign`` and changes nothing else; ``torch.where``
    on a comparison would do the same several times slower on CPU.
    """
    z.add_(0.0)
    return z.add_(torch.copysign(z.new_tensor(epsilon).expand_as(z), z))


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
        return _rule_output(layer, x, None, None, self.epsilon)


@dataclass(frozen=True)
class GammaRule(Rule):
    """LRP-γ: the weights and bias ``w + γ w⁺`` favour positive contributions."""

    gamma: float
    name = "gamma"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        weight = layer.weight + self.gamma * layer.weight.clamp(min=0)
        bias = None if layer.bias is None else layer.bias + self.gamma * layer.bias.clamp(min=0)
        return _rule_output(layer, x, weight, bias, STABILIZER)


class ZPlusRule(Rule):
    """z⁺ (the γ → ∞ limit, no bias): ``R_in = x * W⁺^T (R / W⁺ x)``; for inputs >= 0."""

    name = "zplus"

    def __call__(self, layer: LinearMap, x: Tensor) -> Tensor:
        return _rule_output(layer, x, layer.weight.clamp(min=0), None, STABILIZER)


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
        return _ZBLinear.apply(x, low, high, layer), (x, low, high)


class FlatRule(InputRule):
    """Flat (Lapuschkin et al. 2019): each output's relevance spread evenly over its inputs."""

    name = "flat"

    def __call__(
        self, layer: LinearMap, x: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        ones = torch.ones_like(x, requires_grad=True)
        counts = torch.ones_like(layer.weight)
        return _rule_output(layer, ones, counts, None, STABILIZER, source=x), (ones,)


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
