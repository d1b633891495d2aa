"""ONNX models (``.onnx`` files), converted to an ``nn.Module`` with the ``onnx`` package alone.

The graph runs node by node as torch operations, so the model is differentiable with
respect to its input (every attack needs that), moves with ``.to(device)``, and takes
batches of any size. Convolutions, fully connected layers and batch norms with constant
weights become ``nn.Conv2d``, ``nn.Linear`` and :class:`BatchNorm` children named after
their weights (``conv1``, ``fc``...), so layer diagnostics see the network's blocks.

Only the ``onnx`` package is needed (``pip install 'vulnscope[onnx]'``). onnx2torch would
convert more operators, but it imports torchvision when it is imported (for its
NonMaxSuppression and RoiAlign converters), and torchvision pulls in a CUDA build of
torch where no CPU build is at hand. An ONNX file is a protocol buffer, never pickled
code, so loading one runs nothing from the file.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vulnscope.errors import MissingFileError, ModelError
from vulnscope.models._onnx_layers import LAYERS, BatchNorm
from vulnscope.models._onnx_ops import DTYPES, OPERATORS, Kernel, UnsupportedNodeError

if TYPE_CHECKING:
    import onnx

__all__ = ["SUPPORTED_OPERATORS", "BatchNorm", "OnnxModule", "load_onnx_model"]

logger = logging.getLogger(__name__)

SUPPORTED_OPERATORS: frozenset[str] = frozenset(OPERATORS)
"""The ONNX operators (default domain) :func:`load_onnx_model` converts."""

_INSTALL = "pip install 'vulnscope[onnx]' (or: pip install onnx)"
_EXPORT_ADVICE = (
    "export it with a dynamic batch size: torch.onnx.export(model, (x,), PATH, "
    "dynamic_shapes=({0: torch.export.Dim('batch')},)), or with dynamo=False, "
    "input_names=['x'], dynamic_axes={'x': {0: 'batch'}}"
)


@dataclass(frozen=True)
class _Step:
    node: str
    op: str
    inputs: tuple[str, ...]
    output: str
    run: Kernel
    layer: str | None  # the child module that runs the node (its only input is the first)


class OnnxModule(nn.Module):
    """An ONNX graph run with torch operations; build it with :func:`load_onnx_model`.

    Shape:
        input: what the graph takes, with any batch size; output: what it returns.

    """

    def __init__(
        self,
        *,
        input_name: str,
        output_name: str,
        steps: list[_Step],
        layers: dict[str, nn.Module],
        constants: dict[str, tuple[str, Tensor]],
    ) -> None:
        super().__init__()
        self._input, self._output, self._steps = input_name, output_name, tuple(steps)
        for name, layer in layers.items():
            self.add_module(name, layer)
        for name, value in constants.values():
            self.register_buffer(name, value)
        self._constants = {onnx_name: name for onnx_name, (name, _) in constants.items()}

    def forward(self, x: Tensor) -> Tensor:
        """Run the graph's nodes in order on ``x``; return the graph's output."""
        values = {onnx_name: self.get_buffer(name) for onnx_name, name in self._constants.items()}
        values[self._input] = x
        for step in self._steps:
            args = [values[name] if name else None for name in step.inputs]
            try:
                if step.layer is not None:
                    values[step.output] = self.get_submodule(step.layer)(args[0])
                else:
                    values[step.output] = step.run(*args)
            except RuntimeError as error:
                raise RuntimeError(f"ONNX node {step.node!r} ({step.op}): {error}") from error
        return values[self._output]

    def extra_repr(self) -> str:
        """The graph's input and output names and its number of nodes."""
        return f"input={self._input!r}, output={self._output!r}, nodes={len(self._steps)}"


class _Names:
    """Attribute names for the layers and constants: identifiers, unique, clear of nn.Module's."""

    def __init__(self) -> None:
        self.taken = {*dir(OnnxModule), "training"}

    def __call__(self, hint: str) -> str:
        base = re.sub(r"\W+", "_", hint).strip("_") or "node"
        name, count = base, 1
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def _tensor(proto: onnx.TensorProto) -> Tensor:
    from onnx import numpy_helper

    array = numpy_helper.to_array(proto)
    try:
        return torch.from_numpy(array.copy())
    except TypeError:
        raise UnsupportedNodeError(
            f"holds tensor {proto.name!r} of ONNX data type {proto.data_type}, which torch "
            "does not read"
        ) from None


def _attribute(proto: onnx.AttributeProto) -> Any:
    import onnx

    value = onnx.helper.get_attribute_value(proto)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return _tensor(value)
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read(path: Path) -> onnx.ModelProto:
    import onnx
    import onnx.inliner

    # what a file that is not a protocol buffer raises (protobuf ships no type stubs)
    decode_error: type[Exception] = importlib.import_module("google.protobuf.message").DecodeError
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        if proto.functions:  # modules exported as functions: inline them into the graph
            proto = onnx.inliner.inline_local_functions(proto)
    except (decode_error, onnx.checker.ValidationError, OSError, ValueError) as error:
        raise ModelError(f"{path}: is not a readable ONNX model ({_first_line(error)})") from None
    return proto


def _operator(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"


def _layer_hint(node: onnx.NodeProto, index: int) -> str:
    """``conv1`` for weights ``conv1.weight``, else the node's name, else its position."""
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight.endswith(".weight"):
        return weight.removesuffix(".weight")
    # torch's TorchScript exporter names nodes after the module: "/block/conv1/Conv"
    return node.name.removesuffix(f"/{node.op_type}") or f"{node.op_type.lower()}{index}"


def _input(graph: onnx.GraphProto, path: Path) -> onnx.ValueInfoProto:
    """The graph's one input (old exporters list the weights as inputs too)."""
    weights = {tensor.name for tensor in graph.initializer}
    inputs: list[onnx.ValueInfoProto] = [
        value for value in graph.input if value.name not in weights
    ]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(
            f"{path}: the graph takes {len(inputs)} inputs and returns {len(graph.output)} "
            "outputs; a classifier takes one batch of images and returns one of logits"
        )
    tensor_type = inputs[0].type.tensor_type
    dtype = DTYPES.get(tensor_type.elem_type) if inputs[0].type.HasField("tensor_type") else None
    if dtype is None or not dtype.is_floating_point:
        raise ModelError(
            f"{path}: the graph's input {inputs[0].name!r} is not a floating-point tensor "
            f"(ONNX type {tensor_type.elem_type}); a classifier takes a batch of images"
        )
    return inputs[0]


def _convert(proto: onnx.ModelProto, input_name: str, path: Path) -> OnnxModule:
    graph = proto.graph
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=1)
    unknown = sorted({_operator(node) for node in graph.node} - SUPPORTED_OPERATORS)
    if unknown:
        raise ModelError(
            f"{path}: uses ONNX operators vulnscope cannot convert: {', '.join(unknown)} "
            "(the ones it can are in vulnscope.models.onnx_program.SUPPORTED_OPERATORS)"
        )
    try:
        constants = {tensor.name: _tensor(tensor) for tensor in graph.initializer}
    except UnsupportedNodeError as error:
        raise ModelError(f"{path}: {error}") from None
    names, steps, layers = _Names(), [], {}
    for index, node in enumerate(graph.node):
        where = f"{path}: node {node.name or index!r} ({node.op_type})"
        if any(node.output[1:]):
            raise ModelError(f"{where} has {len(node.output)} outputs; only the first is converted")
        try:
            attributes = {attribute.name: _attribute(attribute) for attribute in node.attribute}
            run = OPERATORS[node.op_type](attributes, opset)
            given = [constants.get(name) for name in node.input]
            varying = [name for name in node.input if name and name not in constants]
            if not varying:  # computed once, here
                constants[node.output[0]] = run(*given)
                continue
            layer = None
            if node.op_type in LAYERS and varying == [node.input[0]]:
                layer = LAYERS[node.op_type](attributes, given[1:])
        except UnsupportedNodeError as error:
            raise ModelError(f"{where} {error}") from None
        except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
            raise ModelError(f"{where} cannot be converted: {_first_line(error)}") from None
        name = None
        if layer is not None:
            name = names(_layer_hint(node, index))
            layers[name] = layer
        inputs_used = tuple(node.input) if name is None else (node.input[0],)
        steps.append(
            _Step(node.name or f"#{index}", node.op_type, inputs_used, node.output[0], run, name)
        )
    output = graph.output[0].name
    if output in constants:
        raise ModelError(f"{path}: the graph's output does not depend on its input")
    used = {name for step in steps for name in step.inputs}
    buffers = {key: (names(key), value) for key, value in constants.items() if key in used}
    return OnnxModule(
        input_name=input_name, output_name=output, steps=steps, layers=layers, constants=buffers
    )


def _batch_problem(module: OnnxModule, shape: list[int], dtype: torch.dtype) -> str | None:
    """Why the model cannot take other batch sizes than ``shape[0]``, or ``None``."""
    x = torch.rand([shape[0] + 1, *shape[1:]], generator=torch.Generator().manual_seed(0))
    x = x.to(dtype)
    try:
        with torch.no_grad():
            together = module(x)
            apart = torch.cat([module(row.unsqueeze(0)) for row in x])
    except (RuntimeError, ValueError, IndexError) as error:
        return _first_line(error)
    scale = 1 + float(apart.abs().max()) if apart.numel() else 1.0
    if together.shape != apart.shape or not torch.allclose(
        together.double(), apart.double(), rtol=1e-3, atol=1e-4 * scale
    ):
        return "a batch's outputs differ from those of its samples one at a time"
    return None


def _check_batch(module: OnnxModule, value: onnx.ValueInfoProto, path: Path) -> None:
    """A batch size fixed at export must not matter to the graph."""
    tensor_type = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    if not dims or dims[0] is None:
        return
    shape = [dim for dim in dims if dim is not None]
    problem = (
        _batch_problem(module, shape, DTYPES[tensor_type.elem_type])
        if len(shape) == len(dims)
        else "the other dimensions are not fixed either"
    )
    if problem is not None:
        raise ModelError(
            f"{path}: was exported for batches of exactly {dims[0]} and fails on others "
            f"({problem}); {_EXPORT_ADVICE}"
        )
    logger.info("%s: exported for batches of %d, but runs on any batch size", path, dims[0])


def load_onnx_model(path: str | Path) -> OnnxModule:
    """Convert an ONNX classifier into an ``nn.Module``, in eval mode, on the CPU.

    The model must take one floating-point input and return one output. A batch
    dimension fixed at export (``torch.onnx.export`` without dynamic shapes) is accepted
    if the graph still computes each sample on its own at other batch sizes (checked on
    random inputs when loading); otherwise the model is refused with how to export it.

    Args:
        path: the ``.onnx`` file; weights stored beside it (``model.onnx.data``, which
            ``torch.onnx.export`` writes) are read from the same folder.

    Returns:
        An :class:`OnnxModule`.

    Raises:
        ModelError: the ``onnx`` package is missing, the file is not a valid ONNX model,
            it uses an operator outside :data:`SUPPORTED_OPERATORS`, or it only runs on
            the batch size it was exported with.

    """
    path = Path(path)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ModelError(f"{path}: ONNX models need the onnx package: {_INSTALL}") from None
    if not path.is_file():
        raise MissingFileError(f"model file {str(path)!r} does not exist")
    proto = _read(path)
    value = _input(proto.graph, path)
    module = _convert(proto, value.name, path)
    _check_batch(module, value, path)
    return module.eval()
