"""ONNX nodes with constant weights, rebuilt as torch layers (``nn.Conv2d``, ``nn.Linear``...).

A node whose only varying input is its first becomes a child module of the converted
model, so its weights are parameters, layer-wise diagnostics can hook it, and
``reset_parameters`` makes an untrained copy. :data:`LAYERS` maps an operator to a
builder that takes the attributes and the constant inputs after the first (``None`` where
an optional one is absent) and returns the layer, or ``None`` where the node does not fit
one (then it runs as a function, see ``_onnx_ops``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.utils import skip_init

from vulnscope.models._onnx_ops import Attributes, spatial_padding

__all__ = ["LAYERS"]

Builder = Callable[[Attributes, Sequence[Tensor | None]], nn.Module | None]

_CONVOLUTIONS: dict[int, type[nn.Conv1d | nn.Conv2d | nn.Conv3d]] = {
    1: nn.Conv1d,
    2: nn.Conv2d,
    3: nn.Conv3d,
}


class BatchNorm(nn.Module):
    """ONNX ``BatchNormalization`` at inference: the stored statistics, any input rank.

    Shape:
        input (N, C, ...); output the same.

    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor, *, eps: float
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(scale.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        self.eps = eps

    def reset_parameters(self) -> None:
        """The identity: unit scale, zero shift, zero mean, unit variance."""
        with torch.no_grad():
            for tensor, value in (
                (self.weight, 1),
                (self.bias, 0),
                (self.running_mean, 0),
                (self.running_var, 1),
            ):
                tensor.fill_(value)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def _filled(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    with torch.no_grad():
        layer.get_parameter("weight").copy_(weight)
        if bias is not None:
            layer.get_parameter("bias").copy_(bias)
    return layer


def _conv(attributes: Attributes, weights: Sequence[Tensor | None]) -> nn.Module | None:
    weight, bias = weights[0], weights[1] if len(weights) > 1 else None
    if weight is None or weight.dim() - 2 not in _CONVOLUTIONS:
        return None
    kernel = list(weight.shape[2:])
    padding, before = spatial_padding(attributes, kernel, value=0.0, pool=False)
    groups = attributes.get("group", 1)
    conv = skip_init(
        _CONVOLUTIONS[len(kernel)],
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        stride=list(attributes.get("strides", [1] * len(kernel))),
        padding=padding,
        dilation=list(attributes.get("dilations", [1] * len(kernel))),
        groups=groups,
        bias=bias is not None,
        dtype=weight.dtype,
        device=weight.device,
    )
    _filled(conv, weight, bias)
    return conv if before is None else nn.Sequential(OrderedDict(pad=before, conv=conv))


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    linear = skip_init(
        nn.Linear,
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        dtype=weight.dtype,
        device=weight.device,
    )
    return _filled(linear, weight, bias)


def _gemm(attributes: Attributes, weights: Sequence[Tensor | None]) -> nn.Module | None:
    b, c = weights[0], weights[1] if len(weights) > 1 else None
    if b is None or b.dim() != 2 or attributes.get("transA", 0):
        return None
    weight = b if attributes.get("transB", 0) else b.t()
    weight = weight * attributes.get("alpha", 1.0)
    if c is None:
        return _linear(weight, None)
    # a bias broadcasts over the batch: (out,), (1, out), (1,) or a scalar
    if c.dim() > 2 or (c.dim() == 2 and c.shape[0] != 1) or c.numel() not in (1, len(weight)):
        return None
    return _linear(weight, (c * attributes.get("beta", 1.0)).reshape(-1).expand(len(weight)))


def _matmul(attributes: Attributes, weights: Sequence[Tensor | None]) -> nn.Module | None:
    b = weights[0]
    return None if b is None or b.dim() != 2 else _linear(b.t(), None)


def _batch_norm(attributes: Attributes, weights: Sequence[Tensor | None]) -> nn.Module | None:
    scale, bias, mean, var = weights[:4]
    if scale is None or bias is None or mean is None or var is None:
        return None
    return BatchNorm(scale, bias, mean, var, eps=attributes.get("epsilon", 1e-5))


LAYERS: dict[str, Builder] = {
    "BatchNormalization": _batch_norm,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
}
