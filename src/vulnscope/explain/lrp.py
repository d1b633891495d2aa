"""Layer-wise relevance propagation in one backward pass (Bach et al. 2015).

LRP explains one logit ``f_c(x)`` by sending it back through the network layer by layer,
each linear layer splitting the relevance of its outputs among its inputs by a *rule*
(:mod:`vulnscope.explain.rules`), ReLU and pooling layers passing it on as the gradient
does. A *composite* says which rule each linear layer uses (Montavon et al. 2019, "Layer-
wise relevance propagation: an overview", section 10.3: zᴮ at the input, γ in the
convolutions, ε in the dense layers). Every rule is a modified forward pass whose gradient
is the rule (zennit's approach, Anders et al. 2021), so the whole explanation costs one
forward and one backward pass; no hook is put on the model, which is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_inputs,
    check_labels,
    check_model_matches_inputs,
    check_real,
    check_tensor,
    describe,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.explain.network import Network, read_network
from vulnscope.explain.rules import INPUT_RULES, LAYER_RULES, LinearMap, make_rule

__all__ = [
    "DEFAULT_COMPOSITE",
    "INPUT_LAYER",
    "LayerRelevance",
    "lrp",
    "lrp_layers",
]

INPUT_LAYER = "<input>"
"""Composite key of the first linear layer (the one that sees the input)."""

Composite = Mapping[str | type[nn.Module], str]
"""Rule names by layer name, :data:`INPUT_LAYER` or layer type (``isinstance``)."""

DEFAULT_COMPOSITE: Composite = {INPUT_LAYER: "zb", nn.Conv2d: "gamma", nn.Linear: "epsilon"}
"""Montavon et al. 2019's recommendation: zᴮ at the input, γ for convolutions, ε for dense."""


class _Settings(NamedTuple):
    rules: str | Composite | None
    epsilon: float
    gamma: float
    bounds: tuple[float, float]


class _Propagated(NamedTuple):
    relevance: Tensor  # (N, ...) at the input
    kept: tuple[Tensor, ...]  # relevance at the output of each kept step
    logit: Tensor  # (N,) the explained logit


def _choose(composite: Composite, layer: LinearMap, first: bool) -> str:
    """The rule of ``layer``: by name, then as the input layer, then by type, else LRP-0."""
    if layer.name in composite:
        return composite[layer.name]
    if first and INPUT_LAYER in composite:
        return composite[INPUT_LAYER]
    for key, rule in composite.items():
        if isinstance(key, type) and isinstance(layer.module, key):
            return rule
    return "zero"


def _check_composite(composite: Any, network: Network) -> Composite:
    if not isinstance(composite, Mapping):
        raise InvalidTypeError(
            f"rules must be a rule name {list(LAYER_RULES)} or a mapping from layer names "
            f"or types to rule names, got {describe(composite)}"
        )
    for key, rule in composite.items():
        if isinstance(key, str):
            if key != INPUT_LAYER and key not in network.names:
                raise InvalidArgumentError(
                    f"rules names layer {key!r}, which the model does not have; its layers: "
                    f"{list(network.names)} (or {INPUT_LAYER!r} for the first linear layer)"
                )
        elif not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise InvalidTypeError(
                f"rules keys must be layer names or nn.Module types, got {describe(key)}"
            )
        if rule not in (*LAYER_RULES, *INPUT_RULES):
            raise InvalidArgumentError(
                f"rules[{key!r}] must be one of {[*LAYER_RULES, *INPUT_RULES]}, got {rule!r}"
            )
    return composite


def _layer_rules(network: Network, settings: _Settings) -> list[str]:
    """The rule name of each linear step, in order; input rules on the first one only."""
    layers = [step for step in network.steps if isinstance(step, LinearMap)]
    if isinstance(settings.rules, str):
        if settings.rules not in LAYER_RULES:
            raise InvalidArgumentError(
                f"rules must be one of {list(LAYER_RULES)} or a composite mapping, "
                f"got {settings.rules!r}"
            )
        return [settings.rules] * len(layers)
    rules = DEFAULT_COMPOSITE if settings.rules is None else settings.rules
    composite = _check_composite(rules, network)
    names = [_choose(composite, layer, i == 0) for i, layer in enumerate(layers)]
    for layer, name in zip(layers[1:], names[1:], strict=True):
        if name in INPUT_RULES:
            raise InvalidArgumentError(
                f"rule {name!r} applies to the first linear layer only (it reads the input "
                f"bounds or ignores the input), but rules gives it to {layer.name!r}"
            )
    return names


def _check_target(target: Any, n: int, classes: int, device: torch.device) -> Tensor:
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full((n,), target, dtype=torch.int64, device=device)
    target = check_tensor(target, "target", of=" of classes or an int")
    if target.ndim == 0:
        target = target.expand(n)
    if not target.is_floating_point() and target.dtype != torch.bool and target.numel():
        low, high = int(target.min()), int(target.max())
        if low < 0 or high >= classes:
            raise InvalidArgumentError(
                f"target must hold classes in [0, {classes - 1}] (the model has {classes} "
                f"outputs), got values in [{low}, {high}]"
            )
    return check_labels(target, n=n, device=device, name="target")


def _bounds_like(network: Network, x: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """The input box, mapped like ``x`` through the normalisation."""
    low = network.normalize(torch.full_like(x, bounds[0]))
    high = network.normalize(torch.full_like(x, bounds[1]))
    return torch.minimum(low, high), torch.maximum(low, high)


def _propagate(
    model: nn.Module,
    inputs: Any,
    target: Any,
    settings: _Settings,
    *,
    keep: Sequence[int] = (),
    mask: tuple[int, Tensor] | None = None,
) -> _Propagated:
    """Relevance of ``target``'s logit at the input and at the outputs of steps ``keep``.

    ``mask``: (step index, (N, C) weights): the relevance at that step's output is
    multiplied channel by channel before going further back (conditional relevance).
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    bounds = check_bounds(settings.bounds)
    x = check_inputs(inputs, bounds=bounds, name="inputs").detach()
    check_model_matches_inputs(model, x)
    network = read_network(model)
    names = iter(_layer_rules(network, settings))
    # The model itself is never called (its weights are read, detached), so its modes and
    # requires_grad flags need no guarding.
    with torch.enable_grad():
        current = network.normalize(x)
        low, high = _bounds_like(network, x, bounds)
        leaves: tuple[Tensor, ...] = ()
        kept: list[Tensor] = []
        for index, step in enumerate(network.steps):
            if isinstance(step, LinearMap) and not leaves:
                current = current.detach().requires_grad_()
                name = next(names)
                if name in INPUT_RULES:
                    current, leaves = INPUT_RULES[name](step, current, low, high)
                else:
                    leaves = (current,)
                    current = make_rule(name, epsilon=settings.epsilon, gamma=settings.gamma)(
                        step, current
                    )
            elif isinstance(step, LinearMap):
                rule = make_rule(next(names), epsilon=settings.epsilon, gamma=settings.gamma)
                current = rule(step, current)
            else:
                if not leaves and not step.reshape:
                    raise ModelError(
                        f"lrp needs a linear layer first; {step.name!r} "
                        f"({type(step.module).__name__}) comes before any"
                    )
                current = step(current)
                if not leaves:
                    low, high = step(low), step(high)
            if mask is not None and mask[0] == index:
                current = _Mask.apply(current, mask[1])
            if index in keep:
                kept.append(current)
        logits = current
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ModelError(
                f"lrp explains logits of shape (N, C); the model returned shape "
                f"{tuple(logits.shape)} for {x.shape[0]} inputs"
            )
        labels = _check_target(target, x.shape[0], logits.shape[1], x.device)
        logit = logits.gather(1, labels[:, None]).squeeze(1)
        grads = torch.autograd.grad(logit.sum(), [*leaves, *kept], allow_unused=True)
    relevance = sum(
        (
            leaf.detach() * grad
            for leaf, grad in zip(leaves, grads[: len(leaves)], strict=True)
            if grad is not None
        ),
        torch.zeros_like(leaves[0]),
    )
    kept_relevance = tuple(
        torch.zeros_like(out) if grad is None else out.detach() * grad
        for out, grad in zip(kept, grads[len(leaves) :], strict=True)
    )
    return _Propagated(relevance.reshape(x.shape), kept_relevance, logit.detach())


class _Mask(torch.autograd.Function):
    """The identity forward; the incoming gradient times a (N, C) channel mask backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(weights.view(weights.shape + (1,) * (x.dim() - 2)).to(x))
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad * weights, None


def _settings(rules: Any, epsilon: Any, gamma: Any, bounds: Any) -> _Settings:
    return _Settings(
        rules,
        check_real(epsilon, "epsilon", minimum=0.0),
        check_real(gamma, "gamma", minimum=0.0),
        check_bounds(bounds),
    )


def lrp(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    *,
    rules: str | Composite | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    r"""Layer-wise relevance of each input feature for the logit of ``target``.

    Rules (Montavon et al. 2019), for a linear layer ``z = W x + b`` whose outputs carry
    relevance ``R``: ``"zero"`` (LRP-0, ``x * W^T (R / z)``: gradient times input),
    ``"epsilon"`` (``z + ε sign z`` in the denominator), ``"gamma"`` (weights and bias
    ``w + γ w⁺``), ``"zplus"`` (positive weights, no bias; for inputs >= 0), and for the
    first linear layer only ``"zb"`` (deep Taylor in the box ``bounds``, Montavon et al.
    2017) and ``"flat"`` (uniform over the receptive field). ReLU, max pooling (winner
    takes all), average pooling, flatten and dropout (the identity, as in evaluation)
    pass relevance as the gradient does; BatchNorm is merged into the linear layer before
    it and a :class:`~vulnscope.models.normalized.Normalized` in front is read as the map
    from pixels to the first layer, relevance passing through it unchanged.

    Conservation: the relevance at the input sums to the explained logit up to what the
    biases and the stabilisers absorb (exactly for z⁺ and bias-free LRP-0);
    :func:`lrp_layers` gives the sum at every layer to check it.

    Args:
        model: an ``nn.Module`` made of the layers above, nested in ``nn.Sequential``.
        inputs: (N, ...) inputs inside ``bounds``.
        target: the class explained per input, (N,) integers, or one int for all.
        rules: one rule name for every linear layer, or a composite: a mapping from
            layer names, :data:`INPUT_LAYER` or layer types to rule names (a layer no key
            matches gets LRP-0). ``None``: :data:`DEFAULT_COMPOSITE`.
        epsilon: the ε of LRP-ε (>= 0).
        gamma: the γ of LRP-γ (>= 0).
        bounds: the input box ``(low, high)`` of zᴮ, in pixel units.

    Returns:
        (N, ...) relevance, shaped like ``inputs``.

    Raises:
        ModelError: a module LRP has no rule for (named with its type).
        InvalidArgumentError: a target out of range, an unknown rule or layer name.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
        >>> x = torch.rand(2, 1, 2, 2)
        >>> r = lrp(net, x, 1, rules="zero")
        >>> torch.allclose(r.sum((1, 2, 3)), net(x)[:, 1])
        True

    """
    settings = _settings(rules, epsilon, gamma, bounds)
    return _propagate(model, inputs, target, settings).relevance


@dataclass(frozen=True)
class LayerRelevance:
    """Relevance summed at every layer: LRP's conservation, layer by layer.

    Attributes:
        names: the layers, in forward order (dotted names).
        sums: (N, L) relevance summed over each layer's output.
        input: (N,) relevance summed over the input.
        logit: (N,) the explained logit (where the relevance starts).

    """

    names: tuple[str, ...]
    sums: Tensor
    input: Tensor
    logit: Tensor


def lrp_layers(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    *,
    rules: str | Composite | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> LayerRelevance:
    """The relevance of :func:`lrp` summed at every layer's output and at the input.

    Arguments as for :func:`lrp`. Relevance is conserved across a layer when its sum at
    the layer's output equals the sum at the output of the layer before.
    """
    settings = _settings(rules, epsilon, gamma, bounds)
    network = read_network(model) if isinstance(model, nn.Module) else None
    count = 0 if network is None else len(network.steps)
    result = _propagate(model, inputs, target, settings, keep=range(count))
    sums = torch.stack([r.flatten(1).sum(1) for r in result.kept], dim=1)
    return LayerRelevance(
        network.names if network else (), sums, result.relevance.flatten(1).sum(1), result.logit
    )
