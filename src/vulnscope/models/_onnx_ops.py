"""The ONNX operators vulnscope converts, each as a torch function of the node's inputs.

:data:`OPERATORS` maps an operator name to a factory that takes the node's attributes and
the model's opset and returns a function of the node's inputs (an absent optional input
arrives as ``None``). Factories check the attributes, so a setting that cannot be
converted is refused when the model loads, not halfway through an attack. Every function
is built from differentiable torch operations, with forward- and reverse-mode gradients.

Operator semantics: https://onnx.ai/onnx/operators/ (inputs that were attributes before
a given opset, such as the axes of ``Squeeze``, are read from wherever the opset puts them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["DTYPES", "OPERATORS", "UnsupportedNodeError", "spatial_padding"]

Attributes = Mapping[str, Any]
Kernel = Callable[..., Tensor]
Factory = Callable[[Attributes, int], Kernel]

# TensorProto.DataType codes
DTYPES = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


class UnsupportedNodeError(Exception):
    """A node setting vulnscope does not convert; the message completes 'the node ...'."""


def _ints(value: Tensor | Sequence[int]) -> list[int]:
    if isinstance(value, Tensor):
        return [int(item) for item in value.reshape(-1).tolist()]
    return [int(item) for item in value]


def _axes(attributes: Attributes, given: Tensor | None) -> list[int] | None:
    """Axes given as an input (recent opsets) or an attribute (older ones)."""
    if given is not None:
        return _ints(given)
    return list(attributes["axes"]) if "axes" in attributes else None


class SpatialPadding(nn.Module):
    """Padding of the spatial dimensions that torch's own ``padding`` cannot express.

    Asymmetric ``pads``, or ``auto_pad="SAME_UPPER"``/``"SAME_LOWER"``, whose amounts
    depend on the input size.
    """

    def __init__(
        self,
        *,
        pads: Sequence[int] | None,
        same: str | None,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
        value: float,
    ) -> None:
        super().__init__()
        self.pads, self.same, self.value = pads, same, value
        self.kernel, self.strides, self.dilations = kernel, strides, dilations

    def forward(self, x: Tensor) -> Tensor:
        sizes = x.shape[2:]
        if self.pads is not None:
            begin, end = list(self.pads[: len(sizes)]), list(self.pads[len(sizes) :])
        else:
            begin, end = [], []
            for size, k, stride, dilation in zip(
                sizes, self.kernel, self.strides, self.dilations, strict=True
            ):
                out = -(-size // stride)
                total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - size)
                small, large = total // 2, total - total // 2
                begin.append(small if self.same == "SAME_UPPER" else large)
                end.append(large if self.same == "SAME_UPPER" else small)
        amounts = [amount for pair in zip(begin[::-1], end[::-1], strict=True) for amount in pair]
        return F.pad(x, amounts, value=self.value)

    def extra_repr(self) -> str:
        return f"pads={self.pads}" if self.pads is not None else f"auto_pad={self.same}"


def _check_auto_pad(attributes: Attributes) -> str:
    auto_pad: str = attributes.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedNodeError(f"has auto_pad={auto_pad!r}")
    return auto_pad


def spatial_padding(
    attributes: Attributes, kernel: Sequence[int], *, value: float, pool: bool
) -> tuple[list[int], SpatialPadding | None]:
    """Torch's ``padding`` for a Conv or pooling node, and the padding to apply before it."""
    n = len(kernel)
    strides = list(attributes.get("strides", [1] * n))
    dilations = list(attributes.get("dilations", [1] * n))
    auto_pad = _check_auto_pad(attributes)
    if auto_pad == "VALID":
        return [0] * n, None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        same = SpatialPadding(
            pads=None,
            same=auto_pad,
            kernel=kernel,
            strides=strides,
            dilations=dilations,
            value=value,
        )
        return [0] * n, same
    pads = list(attributes.get("pads", [0] * 2 * n))
    begin, end = pads[:n], pads[n:]
    # torch pools refuse padding beyond half the kernel; ONNX allows it
    if begin == end and (not pool or all(2 * p <= k for p, k in zip(begin, kernel, strict=True))):
        return begin, None
    explicit = SpatialPadding(
        pads=pads, same=None, kernel=kernel, strides=strides, dilations=dilations, value=value
    )
    return [0] * n, explicit


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVERAGE_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv(attributes: Attributes, opset: int) -> Kernel:
    _check_auto_pad(attributes)

    def run(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        kernel = list(weight.shape[2:])
        padding, before = spatial_padding(attributes, kernel, value=0.0, pool=False)
        if before is not None:
            x = before(x)
        n = len(kernel)
        return _CONVOLUTIONS[n](
            x,
            weight,
            bias,
            list(attributes.get("strides", [1] * n)),
            padding,
            list(attributes.get("dilations", [1] * n)),
            attributes.get("group", 1),
        )

    return run


def _pool_shape(attributes: Attributes) -> tuple[list[int], list[int], list[int]]:
    kernel = list(attributes["kernel_shape"])
    if len(kernel) not in _MAX_POOLS:
        raise UnsupportedNodeError(f"pools over {len(kernel)} dimensions")
    strides = list(attributes.get("strides", [1] * len(kernel)))
    return kernel, strides, list(attributes.get("dilations", [1] * len(kernel)))


def _max_pool(attributes: Attributes, opset: int) -> Kernel:
    kernel, strides, dilations = _pool_shape(attributes)
    padding, before = spatial_padding(attributes, kernel, value=-math.inf, pool=True)
    pool, ceil_mode = _MAX_POOLS[len(kernel)], bool(attributes.get("ceil_mode", 0))

    def run(x: Tensor) -> Tensor:
        x = x if before is None else before(x)
        return pool(x, kernel, strides, padding, dilations, ceil_mode=ceil_mode)

    return run


def _average_pool(attributes: Attributes, opset: int) -> Kernel:
    kernel, strides, dilations = _pool_shape(attributes)
    if any(dilation != 1 for dilation in dilations):
        raise UnsupportedNodeError("has dilations, which torch's average pooling lacks")
    padding, before = spatial_padding(attributes, kernel, value=0.0, pool=True)
    include_pad = bool(attributes.get("count_include_pad", 0))
    if before is not None and not include_pad:
        raise UnsupportedNodeError("pads asymmetrically and leaves the padding out of the average")
    pool, ceil_mode = _AVERAGE_POOLS[len(kernel)], bool(attributes.get("ceil_mode", 0))

    def run(x: Tensor) -> Tensor:
        x = x if before is None else before(x)
        return pool(x, kernel, strides, padding, ceil_mode, include_pad)

    return run


def _gemm(attributes: Attributes, opset: int) -> Kernel:
    alpha, beta = attributes.get("alpha", 1.0), attributes.get("beta", 1.0)
    trans_a, trans_b = attributes.get("transA", 0), attributes.get("transB", 0)

    def run(a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        product = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        product = product if alpha == 1 else alpha * product
        return product if c is None else product + (c if beta == 1 else beta * c)

    return run


def _batch_norm(attributes: Attributes, opset: int) -> Kernel:
    if attributes.get("training_mode", 0) or attributes.get("spatial", 1) != 1:
        raise UnsupportedNodeError(
            "normalises with batch statistics or per position, not at inference"
        )
    eps = attributes.get("epsilon", 1e-5)

    def run(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)

    return run


def _layer_norm(attributes: Attributes, opset: int) -> Kernel:
    axis, eps = attributes.get("axis", -1), attributes.get("epsilon", 1e-5)

    def run(x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
        dims = tuple(range(axis % x.dim(), x.dim()))
        centred = x - x.mean(dims, keepdim=True)
        y = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps) * scale
        return y if bias is None else y + bias

    return run


def _softmax(function: Callable[[Tensor, int], Tensor]) -> Factory:
    def factory(attributes: Attributes, opset: int) -> Kernel:
        axis = attributes.get("axis", -1 if opset >= 13 else 1)
        if opset >= 13:
            return lambda x: function(x, axis)

        def coerced(x: Tensor) -> Tensor:  # before opset 13: over all dimensions from axis
            flat = x.reshape(math.prod(x.shape[: axis % x.dim()]), -1)
            return function(flat, 1).reshape(x.shape)

        return coerced

    return factory


def _flatten(attributes: Attributes, opset: int) -> Kernel:
    axis = attributes.get("axis", 1)
    return lambda x: x.reshape(math.prod(x.shape[: axis % x.dim() if axis < 0 else axis]), -1)


def _reshape(attributes: Attributes, opset: int) -> Kernel:
    allow_zero = attributes.get("allowzero", 0)

    def run(x: Tensor, shape: Tensor | None = None) -> Tensor:
        dims = _ints(shape if shape is not None else attributes["shape"])
        if not allow_zero:  # 0 copies the input's size
            dims = [x.shape[i] if size == 0 else size for i, size in enumerate(dims)]
        return x.reshape(dims)

    return run


def _squeeze(attributes: Attributes, opset: int) -> Kernel:
    def run(x: Tensor, axes: Tensor | None = None) -> Tensor:
        dims = _axes(attributes, axes)
        return x.squeeze() if dims is None else x.squeeze(tuple(d % x.dim() for d in dims))

    return run


def _unsqueeze(attributes: Attributes, opset: int) -> Kernel:
    def run(x: Tensor, axes: Tensor | None = None) -> Tensor:
        dims = _axes(attributes, axes) or []
        for dim in sorted(d % (x.dim() + len(dims)) for d in dims):
            x = x.unsqueeze(dim)
        return x

    return run


def _reduce(function: Callable[[Tensor, tuple[int, ...], bool], Tensor]) -> Factory:
    def factory(attributes: Attributes, opset: int) -> Kernel:
        keep, noop = bool(attributes.get("keepdims", 1)), attributes.get("noop_with_empty_axes", 0)

        def run(x: Tensor, axes: Tensor | None = None) -> Tensor:
            dims = _axes(attributes, axes)
            if not dims and noop:
                return x
            return function(x, tuple(d % x.dim() for d in dims or range(x.dim())), keep)

        return run

    return factory


def _gather(attributes: Attributes, opset: int) -> Kernel:
    axis = attributes.get("axis", 0)

    def run(x: Tensor, indices: Tensor) -> Tensor:
        dim = axis % x.dim()
        index = indices.to(device=x.device, dtype=torch.int64).reshape(-1)
        picked = x.index_select(dim, torch.where(index < 0, index + x.shape[dim], index))
        return picked.reshape([*x.shape[:dim], *indices.shape, *x.shape[dim + 1 :]])

    return run


def _slice(attributes: Attributes, opset: int) -> Kernel:
    def run(
        x: Tensor,
        starts: Tensor | None = None,
        ends: Tensor | None = None,
        axes: Tensor | None = None,
        steps: Tensor | None = None,
    ) -> Tensor:
        if opset < 10:  # attributes, and no steps, before opset 10
            begin, stop = list(attributes["starts"]), list(attributes["ends"])
            dims = attributes.get("axes")
            strides = None
        else:
            begin = [] if starts is None else _ints(starts)
            stop = [] if ends is None else _ints(ends)
            dims = None if axes is None else _ints(axes)
            strides = None if steps is None else _ints(steps)
        index: list[slice] = [slice(None)] * x.dim()
        for i, dim in enumerate(dims if dims is not None else range(len(begin))):
            dim, step = dim % x.dim(), 1 if strides is None else strides[i]
            if step > 0:
                index[dim] = slice(begin[i], stop[i], step)
            else:  # torch slicing takes no negative step
                picked = range(*slice(begin[i], stop[i], step).indices(x.shape[dim]))
                x = x.index_select(dim, torch.tensor(picked, dtype=torch.int64, device=x.device))
        return x[tuple(index)]

    return run


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(attributes: Attributes, opset: int) -> Kernel:
    mode = attributes.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedNodeError(f"pads in mode {mode!r}")

    def run(
        x: Tensor,
        pads: Tensor | None = None,
        value: Tensor | None = None,
        axes: Tensor | None = None,
    ) -> Tensor:
        amounts = _ints(pads if pads is not None else attributes["pads"])
        fill = attributes.get("value", 0.0) if value is None else value.item()
        dims = [d % x.dim() for d in (_ints(axes) if axes is not None else range(x.dim()))]
        torch_pads = [0] * (2 * x.dim())  # torch lists the last dimension first
        for i, dim in enumerate(dims):
            position = 2 * (x.dim() - 1 - dim)
            torch_pads[position : position + 2] = [amounts[i], amounts[i + len(dims)]]
        if mode == "constant":
            return F.pad(x, torch_pads, value=fill)
        # torch pads all but the first two dimensions in these modes, at most
        while torch_pads[-2:] == [0, 0] and len(torch_pads) > max(2, 2 * (x.dim() - 2)):
            del torch_pads[-2:]
        return F.pad(x, torch_pads, mode=_PAD_MODES[mode])

    return run


def _clip(attributes: Attributes, opset: int) -> Kernel:
    def run(x: Tensor, low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
        if opset < 11:
            return torch.clamp(x, attributes.get("min", -math.inf), attributes.get("max", math.inf))
        return x if low is None and high is None else torch.clamp(x, low, high)

    return run


def _cast(attributes: Attributes, opset: int) -> Kernel:
    if attributes["to"] not in DTYPES:
        raise UnsupportedNodeError(f"casts to ONNX data type {attributes['to']}")
    dtype = DTYPES[attributes["to"]]
    return lambda x: x.to(dtype)


def _constant(attributes: Attributes, opset: int) -> Kernel:
    if "value" in attributes:
        value = attributes["value"]
    elif "value_float" in attributes or "value_floats" in attributes:
        given = attributes.get("value_float", attributes.get("value_floats"))
        value = torch.tensor(given, dtype=torch.float32)
    elif "value_int" in attributes or "value_ints" in attributes:
        value = torch.tensor(attributes.get("value_int", attributes.get("value_ints")))
        value = value.to(torch.int64)
    else:
        raise UnsupportedNodeError(f"holds a {next(iter(attributes), 'missing')} value")
    return lambda: value


def _constant_of_shape(attributes: Attributes, opset: int) -> Kernel:
    value = attributes.get("value", torch.zeros(1))
    return lambda shape: torch.full(
        _ints(shape), value.reshape(()).item(), dtype=value.dtype, device=shape.device
    )


def _shape(attributes: Attributes, opset: int) -> Kernel:
    start, end = attributes.get("start", 0), attributes.get("end")
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX divides integers like C


def _selu(attributes: Attributes, opset: int) -> Kernel:
    alpha = attributes.get("alpha", 1.67326319217681884765625)
    gamma = attributes.get("gamma", 1.05070102214813232421875)
    return lambda x: gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def _gelu(attributes: Attributes, opset: int) -> Kernel:
    approximate = attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise UnsupportedNodeError(f"approximates with {approximate!r}")
    return lambda x: F.gelu(x, approximate=approximate)


def _fixed(function: Kernel) -> Factory:
    """An operator without attributes."""
    return lambda attributes, opset: function


OPERATORS: dict[str, Factory] = {
    "Abs": _fixed(torch.abs),
    "Add": _fixed(torch.add),
    "AveragePool": _average_pool,
    "BatchNormalization": _batch_norm,
    "Cast": _cast,
    "Ceil": _fixed(torch.ceil),
    "Clip": _clip,
    "Concat": lambda attributes, opset: lambda *xs: torch.cat(xs, attributes["axis"]),
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Conv": _conv,
    "Div": _fixed(_divide),
    "Dropout": _fixed(lambda x, *_: x),  # inference: the identity
    "Elu": lambda attributes, opset: lambda x: F.elu(x, attributes.get("alpha", 1.0)),
    "Equal": _fixed(torch.eq),
    "Erf": _fixed(torch.erf),
    "Exp": _fixed(torch.exp),
    "Expand": _fixed(lambda x, shape: x.expand(torch.broadcast_shapes(x.shape, _ints(shape)))),
    "Flatten": _flatten,
    "Floor": _fixed(torch.floor),
    "Gather": _gather,
    "Gelu": _gelu,
    "Gemm": _gemm,
    "GlobalAveragePool": _fixed(lambda x: x.mean(tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _fixed(lambda x: x.amax(tuple(range(2, x.dim())), keepdim=True)),
    "HardSigmoid": lambda attributes, opset: (
        lambda x: torch.clamp(attributes.get("alpha", 0.2) * x + attributes.get("beta", 0.5), 0, 1)
    ),
    "HardSwish": _fixed(F.hardswish),
    "Identity": _fixed(lambda x: x),
    "LayerNormalization": _layer_norm,
    "LeakyRelu": lambda attributes, opset: lambda x: F.leaky_relu(x, attributes.get("alpha", 0.01)),
    "Log": _fixed(torch.log),
    "LogSoftmax": _softmax(torch.log_softmax),
    "MatMul": _fixed(torch.matmul),
    "MaxPool": _max_pool,
    "Mul": _fixed(torch.mul),
    "Neg": _fixed(torch.neg),
    "Pad": _pad,
    "Pow": _fixed(torch.pow),
    "PRelu": _fixed(lambda x, slope: torch.where(x >= 0, x, x * slope)),
    "Reciprocal": _fixed(torch.reciprocal),
    "ReduceMax": _reduce(lambda x, dims, keep: x.amax(dims, keepdim=keep)),
    "ReduceMean": _reduce(lambda x, dims, keep: x.mean(dims, keepdim=keep)),
    "ReduceMin": _reduce(lambda x, dims, keep: x.amin(dims, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, dims, keep: x.sum(dims, keepdim=keep)),
    "Relu": _fixed(torch.relu),
    "Reshape": _reshape,
    "Selu": _selu,
    "Shape": _shape,
    "Sigmoid": _fixed(torch.sigmoid),
    "Slice": _slice,
    "Softmax": _softmax(torch.softmax),
    "Softplus": _fixed(F.softplus),
    "Sqrt": _fixed(torch.sqrt),
    "Squeeze": _squeeze,
    "Sub": _fixed(torch.sub),
    "Tanh": _fixed(torch.tanh),
    "Transpose": lambda attributes, opset: (
        lambda x: x.permute(attributes.get("perm", list(range(x.dim()))[::-1]))
    ),
    "Unsqueeze": _unsqueeze,
    "Where": _fixed(lambda condition, a, b: torch.where(condition.bool(), a, b)),
}
