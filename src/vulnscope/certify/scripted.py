"""TorchScript models (what ``vulnscope defend`` writes) rebuilt as eager modules to read.

``torch.fx`` cannot trace a ``torch.jit.ScriptModule``, but its submodules keep their
class names (``original_name``) and attributes. :func:`eager_equivalent` rebuilds the
tree from them, sharing the parameter tensors: layers of the types certify bounds by
their name, anything else with children as the sequence of its children. The rebuilt
network is only a reading aid: :func:`~vulnscope.certify.graph.read_graph` checks that
the graph it reads reproduces the scripted model's own output, so a module whose forward
is not its children in order is refused there, never certified wrongly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vulnscope.errors import ModelError
from vulnscope.models.normalized import Normalized

__all__ = ["eager_equivalent", "is_scripted"]


def _parameter(value: Any) -> nn.Parameter | None:
    """The tensor as a parameter sharing its storage (a loaded script may hold plain tensors)."""
    if value is None or isinstance(value, nn.Parameter):
        return value
    return nn.Parameter(value, requires_grad=bool(value.requires_grad))


def _share(layer: nn.Module, scripted: Any) -> None:
    """Give ``layer`` the scripted module's weight and bias (the same tensors)."""
    for name in ("weight", "bias"):
        setattr(layer, name, _parameter(getattr(scripted, name)))


def _linear(s: Any) -> nn.Module:
    out_features, in_features = s.weight.shape
    layer = nn.Linear(in_features, out_features, bias=s.bias is not None)
    _share(layer, s)
    return layer


def _conv(s: Any) -> nn.Module:
    out_channels, per_group, *kernel = s.weight.shape
    layer = nn.Conv2d(
        per_group * s.groups,
        out_channels,
        tuple(kernel),
        s.stride,
        s.padding,
        s.dilation,
        s.groups,
        bias=s.bias is not None,
        padding_mode=s.padding_mode,
    )
    _share(layer, s)
    return layer


def _batch_norm(s: Any) -> nn.Module:
    layer = (nn.BatchNorm1d if s.original_name == "BatchNorm1d" else nn.BatchNorm2d)(
        s.num_features, eps=s.eps, affine=s.weight is not None
    )
    _share(layer, s)
    layer.running_mean, layer.running_var = s.running_mean, s.running_var
    return layer


def _max_pool(s: Any) -> nn.Module:
    return nn.MaxPool2d(s.kernel_size, s.stride, s.padding, s.dilation, ceil_mode=s.ceil_mode)


_REBUILD: dict[str, Callable[[Any], nn.Module]] = {
    "Linear": _linear,
    "Conv2d": _conv,
    "ChannelsLastConv2d": _conv,
    "BatchNorm1d": _batch_norm,
    "BatchNorm2d": _batch_norm,
    "MaxPool2d": _max_pool,
    "WindowMaxPool2d": _max_pool,
    "AvgPool2d": lambda s: nn.AvgPool2d(
        s.kernel_size, s.stride, s.padding, s.ceil_mode, s.count_include_pad
    ),
    "Flatten": lambda s: nn.Flatten(s.start_dim, s.end_dim),
    "ReLU": lambda s: nn.ReLU(),
    "LeakyReLU": lambda s: nn.LeakyReLU(s.negative_slope),
    "ELU": lambda s: nn.ELU(s.alpha),
    "Tanh": lambda s: nn.Tanh(),
    "Sigmoid": lambda s: nn.Sigmoid(),
    "Softmax": lambda s: nn.Softmax(dim=-1),
    "LogSoftmax": lambda s: nn.LogSoftmax(dim=-1),
    "Identity": lambda s: nn.Identity(),
    "Dropout": lambda s: nn.Dropout(s.p),
}


def eager_equivalent(module: nn.Module, where: str = "") -> nn.Module:
    """An eager module tree equal to the scripted ``module``, sharing its parameters."""
    kind = str(getattr(module, "original_name", type(module).__name__))
    if kind in _REBUILD:
        try:
            rebuilt = _REBUILD[kind](module)
        except (AttributeError, RuntimeError) as error:
            raise ModelError(
                f"certify cannot rebuild the TorchScript {kind} at '{where or 'the model'}' "
                f"({error})"
            ) from None
        rebuilt.train(module.training)
        return rebuilt
    children = [
        (name, eager_equivalent(child, f"{where}.{name}".lstrip(".")))
        for name, child in module.named_children()
    ]
    if kind == "Normalized" and len(children) == 1:
        mean, std = getattr(module, "mean"), getattr(module, "std")  # noqa: B009
        return Normalized(children[0][1], mean.tolist(), std.tolist())
    if not children:
        raise ModelError(
            f"certify cannot bound the TorchScript module {kind} at '{where or 'the model'}': "
            "it is not a layer certify knows, and it has no children to read"
        )
    return nn.Sequential(OrderedDict(children))


def is_scripted(module: object) -> bool:
    """True for a TorchScript module."""
    return isinstance(module, torch.jit.ScriptModule)
