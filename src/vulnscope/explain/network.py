"""A model read as the chain of steps LRP walks: linear maps and relevance-preserving maps.

LRP needs to know, for every layer, whether it is linear (a rule applies), elementwise or
a pooling (relevance passes as the gradient does), or a reshape. This module reads an
``nn.Module`` into that chain once, the way zennit's canonizers prepare a model (Anders et
al. 2021): nested ``nn.Sequential`` are flattened, BatchNorm is merged into the linear
layer before it, a :class:`~vulnscope.models.normalized.Normalized` in front becomes the
map from pixels to the network's input, and anything else is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope.errors import InvalidArgumentError, ModelError
from vulnscope.explain.rules import LinearMap
from vulnscope.models.layout import ChannelsLastConv2d
from vulnscope.models.normalized import Normalized

__all__ = ["Network", "PassStep", "check_layer", "read_network"]

# Layers through which relevance passes as the gradient does (LRP-0 on a pooling is its
# gradient times input; a max pooling's gradient goes to the winner, winner-takes-all).
_PASSING: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
# Layers that only move values around, or are the identity in evaluation.
_RESHAPING: tuple[type[nn.Module], ...] = (nn.Flatten, nn.Dropout, nn.Identity)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED = (nn.Linear, nn.Conv2d, *_PASSING, *_RESHAPING, *_BATCHNORM, nn.Sequential, Normalized)


@dataclass(frozen=True)
class PassStep:
    """A layer relevance passes through as the gradient does (or a reshape)."""

    name: str
    module: nn.Module
    reshape: bool

    def __call__(self, x: Tensor) -> Tensor:
        """The layer's output (the identity for dropout, as in evaluation)."""
        if isinstance(self.module, nn.Dropout | nn.Identity):
            return x
        if isinstance(self.module, nn.MaxPool2d):
            pool = self.module
            return functional.max_pool2d(
                x, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                ceil_mode=pool.ceil_mode,
            )  # fmt: skip
        output: Tensor = self.module(x)
        return output


Step = LinearMap | PassStep


@dataclass(frozen=True)
class Network:
    """A model as LRP walks it.

    Attributes:
        steps: the layers in forward order.
        mean: (C,) the normalisation's mean in front of the layers, or ``None``.
        std: (C,) the normalisation's standard deviation, or ``None``.

    """

    steps: tuple[Step, ...]
    mean: Tensor | None
    std: Tensor | None

    @property
    def names(self) -> tuple[str, ...]:
        """Dotted names of the steps, in forward order."""
        return tuple(step.name for step in self.steps)

    def normalize(self, x: Tensor) -> Tensor:
        """Pixels (N, C, ...) to the first layer's input (the identity without ``Normalized``)."""
        if self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.to(x).view(shape)) / self.std.to(x).view(shape)


def _channels_last(x: Tensor) -> Tensor:
    """``x`` in the channels-last layout, where ChannelsLastConv2d's network runs fastest."""
    if x.dim() != 4:
        return x
    if x.shape[1] == 1:
        return torch.clone(x, memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


class _ChannelsLastMap(LinearMap):
    """A :class:`ChannelsLastConv2d`: same map, input laid out channels-last first."""

    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return super().apply(_channels_last(x), weight, bias)

    def transposed(self, grad: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        return super().transposed(grad, _channels_last(x), weight)


def _linear_map(name: str, module: nn.Linear | nn.Conv2d) -> LinearMap:
    weight = module.weight.detach()
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise ModelError(
            f"lrp supports zero-padded convolutions only; layer {name!r} "
            f"({type(module).__name__}) has padding_mode={module.padding_mode!r}"
        )
    kind = _ChannelsLastMap if isinstance(module, ChannelsLastConv2d) else LinearMap
    return kind(name, module, weight, bias)


def _merge_batchnorm(
    previous: LinearMap, name: str, norm: nn.BatchNorm1d | nn.BatchNorm2d
) -> LinearMap:
    """``previous`` followed by ``norm`` (its running statistics) as one linear map."""
    mean, var = norm.running_mean, norm.running_var
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        raise ModelError(f"BatchNorm {name!r} has no running statistics to merge")
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -mean * scale if norm.bias is None else norm.bias.detach() - mean * scale
    weight = previous.weight * scale.view((-1,) + (1,) * (previous.weight.dim() - 1))
    bias = shift if previous.bias is None else previous.bias * scale + shift
    return type(previous)(previous.name, previous.module, weight, bias)


def _describe(name: str, module: nn.Module) -> str:
    return f"{name or '(the model)'!r} ({type(module).__module__}.{type(module).__name__})"


def read_network(model: nn.Module) -> Network:
    """Read ``model`` into the chain of steps LRP walks.

    Raises:
        ModelError: a module LRP has no rule for (named by its dotted name and type), a
            BatchNorm that follows no linear layer, or a ``Normalized`` not in front.

    """
    steps: list[Step] = []
    normalization: list[Tensor] = []

    def visit(name: str, module: nn.Module) -> None:
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            for child_name, child in module.named_children():
                visit(prefix + child_name, child)
        elif isinstance(module, Normalized):
            if steps or normalization:
                raise ModelError(
                    f"lrp supports a Normalized module only in front of the network; "
                    f"{_describe(name, module)} comes after {steps[-1].name!r}"
                )
            normalization.extend([module.mean.detach(), module.std.detach()])
            visit(prefix + "model", module.model)
        elif isinstance(module, nn.Linear | nn.Conv2d):
            steps.append(_linear_map(name, module))
        elif isinstance(module, _BATCHNORM):
            if not steps or not isinstance(steps[-1], LinearMap):
                raise ModelError(
                    f"lrp merges BatchNorm into the linear layer before it, but "
                    f"{_describe(name, module)} does not follow a Linear or Conv2d layer"
                )
            steps[-1] = _merge_batchnorm(steps[-1], name, module)
        elif isinstance(module, (*_PASSING, *_RESHAPING)):
            steps.append(PassStep(name, module, reshape=isinstance(module, _RESHAPING)))
        else:
            supported = ", ".join(sorted({kind.__name__ for kind in SUPPORTED}))
            raise ModelError(
                f"lrp has no rule for module {_describe(name, module)}; supported module "
                f"types: {supported}"
            )

    visit("", model)
    if not any(isinstance(step, LinearMap) for step in steps):
        raise ModelError("lrp needs a model with at least one Linear or Conv2d layer")
    mean, std = normalization if normalization else (None, None)
    return Network(tuple(steps), mean, std)


def check_layer(network: Network, layer: object, name: str = "layer") -> int:
    """The index of the step called ``layer``; an error listing the names otherwise."""
    if isinstance(layer, str) and layer in network.names:
        return network.names.index(layer)
    raise InvalidArgumentError(
        f"{name} must name a layer of the model, one of {list(network.names)}, got {layer!r}"
    )
