"""A network read into a graph of bounded operators.

:func:`read_graph` walks the model: a module whose type :data:`MODULE_OPERATORS` knows
becomes one node; an ``nn.Sequential`` is read child by child; any other module is traced
with ``torch.fx`` (one level: its own ``forward``, each submodule read recursively), so
residual blocks (``x + self.body(x)``), functional activations and reshapes are read
too. Each node is checked against the module it stands for on an example batch, and the
whole graph against the model, so a certificate is never about another function. An
operator no bound knows raises one :class:`~vulnscope.errors.ModelError` naming its type
and where it sits.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn import functional

from vulnscope.certify.bounds import (
    ELU,
    MODULE_OPERATORS,
    Add,
    AvgPool2d,
    BoundOp,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Reshape,
    ScaleShift,
    Sigmoid,
    Tanh,
)
from vulnscope.certify.scripted import eager_equivalent, is_scripted
from vulnscope.errors import ModelError
from vulnscope.models.normalized import Normalized

__all__ = ["Graph", "Node", "read_graph"]

_PROBABILITIES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
_PROBABILITY_FUNCTIONS = {
    torch.softmax,
    torch.log_softmax,
    functional.softmax,
    functional.log_softmax,
    "softmax",
    "log_softmax",
}
_ACTIVATION_FUNCTIONS: dict[Any, Callable[..., BoundOp]] = {
    torch.relu: lambda *a, **k: ReLU(),
    functional.relu: lambda *a, **k: ReLU(),
    "relu": lambda *a, **k: ReLU(),
    torch.sigmoid: lambda *a, **k: Sigmoid(),
    functional.sigmoid: lambda *a, **k: Sigmoid(),
    "sigmoid": lambda *a, **k: Sigmoid(),
    torch.tanh: lambda *a, **k: Tanh(),
    functional.tanh: lambda *a, **k: Tanh(),
    "tanh": lambda *a, **k: Tanh(),
    functional.leaky_relu: lambda x, negative_slope=0.01, *a, **k: LeakyReLU(negative_slope),
    functional.elu: lambda x, alpha=1.0, *a, **k: ELU(alpha),
    functional.max_pool2d: lambda x, kernel_size, stride=None, padding=0, *a, **k: MaxPool2d(
        kernel_size, stride or None, padding
    ),
    functional.avg_pool2d: lambda x, kernel_size, stride=None, padding=0, *a, **k: AvgPool2d(
        kernel_size,
        stride or None,
        padding,
        ceil_mode=False,
        count_include_pad=True,
        divisor_override=None,
    ),
}
_SUPPORTED = (
    "it bounds Linear, Conv2d, BatchNorm (eval), Flatten/reshape, AvgPool2d, MaxPool2d, ReLU, "
    "LeakyReLU, ELU, Tanh, Sigmoid, sums of two branches and scaling or shifting by constants"
)
_RESHAPES = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_IDENTITIES = {"contiguous", functional.dropout}


@dataclass(frozen=True)
class Node:
    """One operator of the graph.

    Attributes:
        name: where it sits in the model (``"fc1"``, ``"block.0.body.conv"``).
        op: the bounded operator.
        inputs: indices of the nodes it reads (empty for the input node).
        shape: per-sample shape of its output.

    """

    name: str
    op: BoundOp | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """A network as nodes in topological order: node 0 is the input, the last the logits.

    The operators read the model's parameters when called, so bounds computed on the graph
    follow the model as it trains (and are differentiable with respect to its parameters).
    """

    nodes: tuple[Node, ...]

    def values(self, x: Tensor) -> list[Tensor]:
        """Every node's value for the batch ``x`` (B, *in)."""
        values = [x]
        for node in self.nodes[1:]:
            assert node.op is not None
            values.append(node.op.forward(*(values[i] for i in node.inputs)))
        return values

    def forward(self, x: Tensor) -> Tensor:
        """The network's output for ``x``: (B, *in) to (B, C)."""
        return self.values(x)[-1]

    def nonlinear(self) -> list[int]:
        """Indices of the nodes whose operator needs its inputs' bounds."""
        return [
            index
            for index, node in enumerate(self.nodes)
            if node.op is not None and not node.op.is_linear
        ]

    def backward_work(self) -> int:
        """Coefficients CROWN's backward passes carry per point: its cost estimate.

        For each node a nonlinear operator reads (and the logits), its neurons times the
        neurons of every node before it: a backward pass from it holds one coefficient per
        pair (about 7e4 for the digits MLP, 7e6 for the digits CNN).
        """
        sizes = [max(1, math.prod(node.shape)) for node in self.nodes]
        read = {i for index in self.nonlinear() for i in self.nodes[index].inputs}
        read.add(len(self.nodes) - 1)
        return sum(sizes[index] * sum(sizes[:index]) for index in sorted(read))


class _LeafTracer(fx.Tracer):
    """Traces one module's own ``forward``: every submodule stays a call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


class _Reader:
    """Reads modules into nodes while computing their values on an example batch."""

    def __init__(self, example: Tensor) -> None:
        self.nodes: list[Node] = [Node("input", None, (), tuple(example.shape[1:]))]
        self.values: list[Tensor] = [example]

    def add(self, name: str, op: BoundOp, inputs: Sequence[int], value: Tensor) -> int:
        """Append ``op`` reading ``inputs``, checked against the module's ``value``."""
        arguments = [self.values[i] for i in inputs]
        if not isinstance(value, Tensor) or value.shape[:1] != arguments[0].shape[:1]:
            raise ModelError(
                f"certify needs every layer to keep the batch dimension first; '{name}' "
                f"maps a batch of {arguments[0].shape[0]} to {_shape_of(value)}"
            )
        op.input_shapes = tuple(tuple(a.shape[1:]) for a in arguments)
        op.output_shape = tuple(value.shape[1:])
        computed = op.forward(*arguments)
        if computed.shape != value.shape or not torch.allclose(
            computed, value, rtol=1e-4, atol=1e-5
        ):
            raise ModelError(
                f"certify read '{name}' ({type(op).__name__}) but its value differs from the "
                "module's on the example batch; it cannot bound this layer"
            )
        self.nodes.append(Node(name, op, tuple(inputs), tuple(value.shape[1:])))
        self.values.append(value)
        return len(self.nodes) - 1

    def module(self, module: nn.Module, name: str, index: int) -> int:
        """Read ``module`` applied to node ``index``; returns the index of its output."""
        where = name or "the model"
        if isinstance(module, _PROBABILITIES):
            raise _probabilities_error(type(module).__name__, where)
        if isinstance(module, Normalized):
            value = self.values[index]
            shape = (-1,) + (1,) * (value.dim() - 2)
            std = module.std.detach().to(value.dtype)
            mean = module.mean.detach().to(value.dtype)
            scale, shift = (1 / std).view(shape), (-mean / std).view(shape)
            if module.mean.numel() == 1:
                scale, shift = scale.reshape(()), shift.reshape(())
            normalisation = ScaleShift(scale, shift)
            normalised = self.add(
                f"{name}.normalise".lstrip("."),
                normalisation,
                [index],
                normalisation.forward(value),
            )
            return self.module(module.model, f"{name}.model".lstrip("."), normalised)
        factory = _factory(type(module))
        if factory is not None:
            op = factory(module)
            if op is None:
                return index
            with torch.no_grad():
                value = module(self.values[index])
            return self.add(name, op, [index], value)
        if type(module).forward is nn.Sequential.forward:
            for child_name, child in module.named_children():
                index = self.module(child, f"{name}.{child_name}".lstrip("."), index)
            return index
        if type(module).__module__.startswith("torch.nn."):
            # a built-in layer outside the table: name it, not the function its forward calls
            raise ModelError(
                f"certify cannot bound {type(module).__name__} at '{where}'; {_SUPPORTED}"
            )
        return self.traced(module, name, index)

    def traced(self, module: nn.Module, name: str, index: int) -> int:
        """Read a module of unknown type through its ``torch.fx`` graph."""
        where = name or "the model"
        try:
            graph = _LeafTracer().trace(module)
        except Exception as error:
            raise ModelError(
                f"certify cannot bound {type(module).__name__} at '{where}': it is not a "
                f"layer certify knows and torch.fx cannot read its forward ({error})"
            ) from None
        env: dict[fx.Node, Any] = {}
        for fx_node in graph.nodes:
            here = f"{name}.{fx_node.name}".lstrip(".")
            if fx_node.op == "placeholder":
                if env:
                    raise ModelError(
                        f"certify bounds one-input networks; {type(module).__name__} at "
                        f"'{where}' takes several"
                    )
                env[fx_node] = _Ref(index)
            elif fx_node.op == "get_attr":
                env[fx_node] = _constant(_attribute(module, str(fx_node.target)))
            elif fx_node.op == "call_module":
                sub = module.get_submodule(str(fx_node.target))
                source = env[fx_node.args[0]]
                env[fx_node] = _Ref(
                    self.module(
                        sub, f"{name}.{fx_node.target}".lstrip("."), _node_index(source, here)
                    )
                )
            elif fx_node.op in ("call_function", "call_method"):
                env[fx_node] = self.call(fx_node, env, here)
            elif fx_node.op == "output":
                result = env[fx_node.args[0]]
                return _node_index(result, where)
        raise ModelError(f"{type(module).__name__} at '{where}' returns nothing")

    def call(self, fx_node: fx.Node, env: dict[fx.Node, Any], where: str) -> Any:
        """Read one function or method call of a traced forward."""
        target = fx_node.target
        args = [env[a] if isinstance(a, fx.Node) else a for a in fx_node.args]
        kwargs = {k: env[v] if isinstance(v, fx.Node) else v for k, v in fx_node.kwargs.items()}
        nodes = [a for a in args if isinstance(a, _Ref)]
        if not nodes:  # arithmetic on constants only
            return _evaluate(fx_node, args, kwargs)
        concrete = [self.values[a.index] if isinstance(a, _Ref) else a for a in args]
        with torch.no_grad():
            value = _evaluate(fx_node, concrete, kwargs)
        if target in _PROBABILITY_FUNCTIONS:
            raise _probabilities_error(str(getattr(target, "__name__", target)), where)
        first = args[0]
        if target in _IDENTITIES and isinstance(first, _Ref):
            return first
        op = _function_operator(target, args, kwargs, where)
        inputs = [a.index for a in nodes]
        shapes = [self.nodes[i].shape for i in inputs]
        if isinstance(op, Add) and shapes[0] != shapes[1]:
            # intervals would broadcast, but the backward pass gives each branch its own
            raise ModelError(
                f"certify bounds sums of two branches of one shape; '{where}' sums shapes "
                f"{shapes[0]} and {shapes[1]}"
            )
        return _Ref(self.add(where, op, inputs, value))


@dataclass(frozen=True)
class _Ref:
    """A traced value that is a node of the graph (not a constant)."""

    index: int


def _node_index(value: Any, where: str) -> int:
    if isinstance(value, _Ref):
        return value.index
    raise ModelError(f"certify expected a tensor computed from the input at '{where}'")


def _function_operator(target: Any, args: list[Any], kwargs: dict[str, Any], where: str) -> BoundOp:
    """The operator of a function call with at least one graph node among its arguments."""
    name = getattr(target, "__name__", str(target))
    if target in _ACTIVATION_FUNCTIONS:
        return _ACTIVATION_FUNCTIONS[target](*args, **kwargs)
    if target in _RESHAPES:
        return Reshape()
    refs = [a for a in args if isinstance(a, _Ref)]
    constants = [a for a in args if not isinstance(a, _Ref)]
    if target in (operator.add, torch.add, "add", "__add__"):
        if len(refs) == 2:
            return Add()
        return ScaleShift(1.0, _constant(constants[0]))
    if target in (operator.sub, torch.sub, "sub") and len(refs) == 1:
        if isinstance(args[0], _Ref):
            return ScaleShift(1.0, -_constant(args[1]))
        return ScaleShift(-1.0, _constant(args[0]))
    if target in (operator.mul, torch.mul, "mul") and len(refs) == 1:
        return ScaleShift(_constant(constants[0]), 0.0)
    if (
        target in (operator.truediv, torch.div, "div")
        and isinstance(args[0], _Ref)
        and len(refs) == 1
    ):
        return ScaleShift(1 / _constant(args[1]), 0.0)
    if target in (operator.neg, torch.neg, "neg"):
        return ScaleShift(-1.0, 0.0)
    raise ModelError(f"certify cannot bound the call {name}(...) at '{where}'; {_SUPPORTED}")


def _constant(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    raise ModelError(f"certify expected a constant number or tensor, got {type(value).__name__}")


def _attribute(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _evaluate(fx_node: fx.Node, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if fx_node.op == "call_method":
        return getattr(args[0], str(fx_node.target))(*args[1:], **kwargs)
    return fx_node.target(*args, **kwargs)  # type: ignore[operator]


def _factory(kind: type[nn.Module]) -> Callable[..., BoundOp | None] | None:
    for base in kind.__mro__:
        if base in MODULE_OPERATORS:
            return MODULE_OPERATORS[base]
    return None


def _shape_of(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _probabilities_error(kind: str, where: str) -> ModelError:
    return ModelError(
        f"the model ends in {kind} (at '{where}'): certify bounds logits, not probabilities; "
        "pass the model without its softmax (the certificate is the same: softmax keeps "
        "the order of the logits)"
    )


def read_graph(model: nn.Module, example: Tensor) -> Graph:
    """Read ``model`` into a :class:`Graph`, checked on the batch ``example``.

    Args:
        model: the classifier (logits out), an ``nn.Module`` in eval mode; a TorchScript
            module is read through :func:`~vulnscope.certify.scripted.eager_equivalent`.
        example: a batch of inputs (B, *in), used to infer shapes and to check that each
            node, and the whole graph, reproduce the model.

    Raises:
        ModelError: for a layer certify cannot bound (naming its type and where it sits),
            a softmax output, batch norm or dropout in training mode, or a graph that does
            not reproduce the model.

    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"certify bounds torch.nn.Module networks, got {type(model).__name__}")
    reader = _Reader(example.detach())
    readable = eager_equivalent(model) if is_scripted(model) else model
    with torch.no_grad():
        try:
            last = reader.module(readable, "", 0)
        except RuntimeError as error:
            if not is_scripted(model):
                raise
            # a scripted module is read as its children in order; shapes that do not chain
            # mean its forward is something else (a reformer runs its second child first)
            raise ModelError(
                "the TorchScript model's submodules, run in the order they were registered, "
                "do not chain (its forward is not its children in sequence); certify cannot "
                f"read it: {str(error).splitlines()[0]}"
            ) from None
        expected = model(example)
    if last == 0:
        raise ModelError("the model has no layer certify can bound: it is the identity")
    graph = Graph(tuple(reader.nodes[: last + 1]))
    with torch.no_grad():
        output = graph.forward(example)
    if output.shape != expected.shape or not torch.allclose(output, expected, rtol=1e-4, atol=1e-5):
        raise ModelError(
            "the graph certify read from the model does not reproduce its output (its forward "
            "may branch on values or use layers outside its children); it cannot be bounded"
        )
    if output.dim() != 2:
        raise ModelError(
            f"certify bounds classifiers with logits of shape (B, C), got {tuple(output.shape)}"
        )
    return graph
