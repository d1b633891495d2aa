"""One bounded operator per layer type, and the table that maps modules onto them.

:data:`MODULE_OPERATORS` maps a module type to a function building its operator (or
``None`` for a module that is the identity in eval mode). To bound a new layer type,
write its :class:`BoundOp` and add a line here; the graph reader
(:mod:`vulnscope.certify.graph`) finds it by the module's type.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vulnscope.certify.bounds.activations import ELU, Activation, LeakyReLU, ReLU, Sigmoid, Tanh
from vulnscope.certify.bounds.add import Add
from vulnscope.certify.bounds.affine import Affine
from vulnscope.certify.bounds.avgpool import AvgPool2d
from vulnscope.certify.bounds.base import (
    BoundOp,
    Interval,
    concretize,
    linear_range,
    lower_linear,
)
from vulnscope.certify.bounds.batchnorm import BatchNorm
from vulnscope.certify.bounds.conv import Conv2d
from vulnscope.certify.bounds.elementwise import ScaleShift
from vulnscope.certify.bounds.linear import Linear
from vulnscope.certify.bounds.maxpool import MaxPool2d
from vulnscope.certify.bounds.reshape import Reshape
from vulnscope.errors import ModelError

__all__ = [
    "ELU",
    "MODULE_OPERATORS",
    "Activation",
    "Add",
    "Affine",
    "AvgPool2d",
    "BatchNorm",
    "BoundOp",
    "Conv2d",
    "Interval",
    "LeakyReLU",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "Reshape",
    "ScaleShift",
    "Sigmoid",
    "Tanh",
    "concretize",
    "linear_range",
    "lower_linear",
]


def _leaky_relu(module: nn.LeakyReLU) -> BoundOp:
    slope = float(module.negative_slope)
    if not 0.0 <= slope <= 1.0:
        raise ModelError(
            f"LeakyReLU must have a negative slope in [0, 1] to be bounded, got {slope}"
        )
    return LeakyReLU(slope)


def _conv(module: nn.Conv2d) -> BoundOp:
    if module.padding_mode != "zeros":
        raise ModelError(
            f"Conv2d must pad with zeros to be bounded, got padding_mode={module.padding_mode!r}"
        )
    return Conv2d(module)


def _batch_norm(module: nn.modules.batchnorm._BatchNorm) -> BoundOp:
    if module.training:
        raise ModelError(
            f"{type(module).__name__} is in training mode, where its output depends on the "
            "batch; certificates hold for the eval-mode network: call model.eval() first"
        )
    if module.running_mean is None:
        raise ModelError(
            f"{type(module).__name__} keeps no running statistics (track_running_stats=False)"
            ": its output depends on the batch and has no certificate"
        )
    return BatchNorm(module)


def _max_pool(module: nn.MaxPool2d) -> BoundOp:
    if module.ceil_mode or module.dilation not in (1, (1, 1)):
        raise ModelError("MaxPool2d with ceil_mode or dilation cannot be bounded")
    return MaxPool2d(module.kernel_size, module.stride, module.padding)


def _avg_pool(module: nn.AvgPool2d) -> BoundOp:
    return AvgPool2d(
        module.kernel_size,
        module.stride,
        module.padding,
        ceil_mode=module.ceil_mode,
        count_include_pad=module.count_include_pad,
        divisor_override=module.divisor_override,
    )


def _dropout(module: nn.Module) -> None:
    if module.training:
        raise ModelError(
            f"{type(module).__name__} is in training mode, where its output is random; "
            "certificates hold for the eval-mode network: call model.eval() first"
        )


MODULE_OPERATORS: dict[type[nn.Module], Callable[..., BoundOp | None]] = {
    nn.Linear: Linear,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.Flatten: lambda module: Reshape(),
    nn.Unflatten: lambda module: Reshape(),
    nn.AvgPool2d: _avg_pool,
    nn.MaxPool2d: _max_pool,
    nn.ReLU: lambda module: ReLU(),
    nn.LeakyReLU: _leaky_relu,
    nn.ELU: lambda module: ELU(float(module.alpha)),
    nn.Tanh: lambda module: Tanh(),
    nn.Sigmoid: lambda module: Sigmoid(),
    nn.Identity: lambda module: None,
    nn.Dropout: _dropout,
    nn.Dropout2d: _dropout,
}
"""Module type to operator factory; subclasses match through their base class."""
