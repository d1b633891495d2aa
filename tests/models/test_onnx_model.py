"""ONNX models (.onnx) load as nn.Modules that compute, and differentiate, what the model did."""

from __future__ import annotations

import json
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from vulnscope.cli import main
from vulnscope.errors import ModelError
from vulnscope.models import DigitsCNN, DigitsMLP, build_seeded, load_model
from vulnscope.models.onnx_program import SUPPORTED_OPERATORS, OnnxModule

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402


class _Wider(nn.Module):
    """The layers the digits models lack: batch norm, strides, groups, padding, pooling..."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)
        self.pool = nn.AvgPool2d(2, count_include_pad=True)
        self.layer_norm = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 10)
        with torch.no_grad():  # statistics a trained network would have
            self.norm.running_mean.uniform_(-0.2, 0.2)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.leaky_relu(self.norm(self.conv(x)), 0.1)
        h = nn.functional.pad(h, (1, 0, 0, 1), mode="reflect")
        h = nn.functional.max_pool2d(nn.functional.gelu(self.grouped(h)), 2, padding=1)
        h = torch.cat([self.pool(h), h.mean((2, 3), keepdim=True)], 1)
        h = self.layer_norm(h.reshape(x.shape[0], -1))
        return self.fc(nn.functional.hardswish(h) + torch.tanh(h).clamp(-0.5, 0.5))


def _seeded(factory):  # type: ignore[no-untyped-def]
    return build_seeded(factory, 0).eval()


def _export(model, path, *, exporter="torchscript", dynamic=True, batch=2):  # type: ignore[no-untyped-def]
    x = torch.rand(batch, 1, 8, 8)
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")  # torch's default exporter needs it
    with warnings.catch_warnings():  # the exporters' deprecations and constant folding
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
            torch.onnx.export(model, (x,), str(path), dynamic_shapes=shapes, verbose=False)
        else:
            axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes=axes,
            )


@pytest.mark.parametrize(
    ("factory", "exporter", "children"),
    [
        (DigitsCNN, "torchscript", ["conv1", "conv2", "fc", "logits"]),
        (DigitsMLP, "torchscript", ["fc1", "fc2", "logits"]),
        (_Wider, "torchscript", ["conv", "grouped", "fc"]),
        (DigitsCNN, "dynamo", ["conv1", "conv2", "fc", "logits"]),
        (_Wider, "dynamo", ["conv", "grouped", "fc"]),
    ],
    ids=["cnn", "mlp", "wider", "cnn-dynamo", "wider-dynamo"],
)
def test_a_converted_model_computes_and_differentiates_like_the_original(
    factory, exporter, children, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    model = _seeded(factory)
    path = tmp_path / "model.onnx"
    _export(model, path, exporter=exporter)
    loaded = load_model(str(path))
    assert isinstance(loaded, OnnxModule) and not loaded.training
    assert [name for name, _ in loaded.named_children()] == children
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3, 17):
        x = torch.rand(batch, 1, 8, 8, generator=generator, requires_grad=True)
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
        cotangent = torch.randn(batch, 10, generator=generator)
        (expected,) = torch.autograd.grad(model(x), x, cotangent)
        (actual,) = torch.autograd.grad(loaded(x), x, cotangent)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    tangent = torch.randn(4, 1, 8, 8, generator=generator)  # forward mode, as diagnostics use
    x = torch.rand(4, 1, 8, 8, generator=generator)
    expected = torch.func.jvp(model, (x,), (tangent,))[1]
    torch.testing.assert_close(
        torch.func.jvp(loaded, (x,), (tangent,))[1], expected, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(loaded.double()(x.double()), model.double()(x.double()))


def test_modules_exported_as_onnx_functions_are_inlined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, path = _seeded(DigitsMLP), tmp_path / "functions.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            export_modules_as_functions={nn.Linear},
        )
    assert onnx.load(str(path)).functions
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(load_model(str(path))(x), model(x), atol=1e-5, rtol=1e-5)


def test_weights_listed_among_the_inputs_are_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, path = _seeded(DigitsCNN), tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
            keep_initializers_as_inputs=True,
        )
    assert len(onnx.load(str(path)).graph.input) > 1
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(load_model(str(path))(x), model(x), atol=1e-5, rtol=1e-5)


def test_loading_draws_nothing_from_the_global_random_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    _export(_seeded(DigitsCNN), path, dynamic=False, batch=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_model(str(path))
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_fixed_batch_that_does_not_matter_is_accepted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _seeded(DigitsCNN)  # nn.Flatten exports as Flatten, which takes any batch
    path = tmp_path / "fixed.onnx"
    _export(model, path, dynamic=False, batch=1)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(load_model(str(path))(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_fixed_batch_that_matters_is_refused_with_how_to_export(exporter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _seeded(_Wider)  # x.reshape(x.shape[0], -1) is exported as reshape to (1, -1)
    path = tmp_path / "fixed.onnx"
    _export(model, path, exporter=exporter, dynamic=False, batch=1)
    with pytest.raises(
        ModelError,
        match=r"batches of exactly 1 and fails on others .*"
        r"dynamic_shapes=\(\{0: torch\.export\.Dim\('batch'\)\},\)",
    ):
        load_model(str(path))


def test_diagnose_runs_end_to_end_on_an_onnx_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    _export(_seeded(DigitsCNN), path)
    out = tmp_path / "d"
    assert (
        main(
            [
                "diagnose",
                "--model",
                str(path),
                "--samples",
                "4",
                "--sections",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "diagnostics.json").read_text())
    assert record["amplification"]["blocks"] == ["conv1", "conv2", "fc", "logits"]


def test_an_onnx_model_audits_like_the_original(tmp_path, digits_cnn) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cnn.onnx"
    _export(digits_cnn, path)
    records = []
    for model in (str(path), "digits-cnn"):
        out = tmp_path / model.replace("/", "_")
        # one process: the two pieces would otherwise start a worker group per audit
        command = [
            "audit",
            "--model",
            model,
            "--limit",
            "30",
            "--stages",
            "linf,dangerous",
            "--attacks",
            "apgd-ce",
            "--linf-eps",
            "0.1",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
        assert main(command) == 0
        records.append(json.loads((out / "results.json").read_text()))
    onnx, original = records
    assert onnx["clean_accuracy"] == original["clean_accuracy"]
    assert onnx["robustness"]["linf"]["accuracy"] == original["robustness"]["linf"]["accuracy"]
    assert [row["adversarial"] for row in onnx["dangerous"]["rows"]] == [
        row["adversarial"] for row in original["dangerous"]["rows"]
    ]


def _graph(nodes, initializers=(), *, shape=(2, 3, 7, 7), opset=17, inputs=None):  # type: ignore[no-untyped-def]
    """A model around ``nodes`` from input x (batch 'n') to output y."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape[1:]])]
    y = helper.make_tensor_value_info("y", inputs[0].type.tensor_type.elem_type, None)
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [y],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)  # the checker wants the output's shape


def _node(op, inputs=("x",), **attributes):  # type: ignore[no-untyped-def]
    return helper.make_node(op, list(inputs), ["y"], name=f"my_{op.lower()}", **attributes)


_RNG = np.random.default_rng(0)
_W = _RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
_F = _RNG.standard_normal((6, 5)).astype(np.float32)
_BN = [_RNG.uniform(0.5, 2, 3).astype(np.float32) for _ in range(4)]
_I64 = np.int64

# Each runs through onnx's own reference implementation (numpy) and through vulnscope.
_REFERENCE_CASES = {
    "conv-same-upper": (
        [_node("Conv", ("x", "w"), auto_pad="SAME_UPPER", strides=[2, 2])],
        [("w", _W)],
        (2, 3, 7, 7),
        17,
    ),
    "conv-same-lower": (
        [_node("Conv", ("x", "w"), auto_pad="SAME_LOWER", strides=[2, 1])],
        [("w", _W[:, :, :2, :2])],
        (2, 3, 7, 7),
        17,
    ),
    "conv-asymmetric-grouped": (
        [_node("Conv", ("x", "w", "b"), pads=[0, 1, 2, 0], group=3)],
        [("w", _W[:3, :1]), ("b", _W[:3, 0, 0, 0])],
        (2, 3, 7, 7),
        17,
    ),
    "maxpool-asymmetric": (
        [_node("MaxPool", kernel_shape=[3, 3], pads=[1, 0, 0, 1], strides=[2, 2])],
        [],
        (2, 3, 7, 7),
        17,
    ),
    "maxpool-ceil": (
        [_node("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
        [],
        (2, 3, 7, 7),
        17,
    ),
    "avgpool-include-pad": (
        [_node("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
        [],
        (2, 3, 7, 7),
        17,
    ),
    "avgpool-exclude-pad": (
        [_node("AveragePool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])],
        [],
        (2, 3, 7, 7),
        17,
    ),
    "global-pools": (
        [
            helper.make_node("GlobalAveragePool", ["x"], ["a"]),
            helper.make_node("GlobalMaxPool", ["x"], ["b"]),
            _node("Sub", ("a", "b")),
        ],
        [],
        (2, 3, 7, 7),
        17,
    ),
    "batchnorm": (
        [_node("BatchNormalization", ("x", "s", "b", "m", "v"), epsilon=1e-3)],
        list(zip("sbmv", _BN, strict=True)),
        (2, 3, 7, 7),
        15,
    ),
    "layernorm": (
        [_node("LayerNormalization", ("x", "s", "b"), axis=2)],
        [("s", _W[0, 0]), ("b", _W[0, 1])],
        (2, 3, 3, 3),
        17,
    ),
    "gemm-alpha-beta": (
        [_node("Gemm", ("x", "w", "c"), alpha=0.5, beta=2.0)],
        [("w", _F), ("c", _F[:1])],
        (2, 6),
        17,
    ),
    "gemm-transposed": ([_node("Gemm", ("x", "w"), transB=1)], [("w", _F.T.copy())], (2, 6), 17),
    "matmul": ([_node("MatMul", ("x", "w"))], [("w", _F)], (2, 4, 6), 17),
    "logsoftmax": ([_node("LogSoftmax", axis=2)], [], (2, 3, 4, 5), 13),
    "flatten-reshape": (
        [helper.make_node("Flatten", ["x"], ["f"], axis=2), _node("Reshape", ("f", "s"))],
        [("s", np.array([0, -1, 5], _I64))],
        (2, 3, 4, 5),
        17,
    ),
    "transpose": ([_node("Transpose", perm=[0, 2, 3, 1])], [], (2, 3, 4, 5), 17),
    "slice-negative-step": (
        [_node("Slice", ("x", "st", "en", "ax", "sp"))],
        [
            ("st", np.array([-1, 1], _I64)),
            ("en", np.array([-100, 9], _I64)),
            ("ax", np.array([3, 2], _I64)),
            ("sp", np.array([-2, 2], _I64)),
        ],
        (2, 3, 4, 5),
        17,
    ),
    "slice-opset-9": ([_node("Slice", starts=[1], ends=[3], axes=[1])], [], (2, 3, 4, 5), 9),
    "pad-reflect": (
        [_node("Pad", ("x", "p"), mode="reflect")],
        [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], _I64))],
        (2, 3, 4, 5),
        17,
    ),
    "pad-edge-axes": (
        [_node("Pad", ("x", "p", "", "a"), mode="edge")],
        [("p", np.array([1, 2], _I64)), ("a", np.array([-1], _I64))],
        (2, 3, 4, 5),
        18,
    ),
    "squeeze-unsqueeze-opset-11": (
        [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1, -1]),
            _node("Squeeze", ("u",), axes=[-1]),
        ],
        [],
        (2, 3, 4),
        11,
    ),
    "squeeze-unsqueeze": (
        [helper.make_node("Unsqueeze", ["x", "a"], ["u"]), _node("Squeeze", ("u", "a"))],
        [("a", np.array([0, 3], _I64))],
        (2, 3, 4),
        13,
    ),
    "reduce": (
        [
            helper.make_node("ReduceMean", ["x", "a"], ["m"], keepdims=0),
            helper.make_node("ReduceSum", ["x", "a"], ["s"]),
            helper.make_node("ReduceMax", ["x", "a"], ["t"], keepdims=0),
            helper.make_node("Mul", ["s", "t"], ["st"]),
            _node("Add", ("m", "st")),
        ],
        [("a", np.array([2, 3], _I64))],
        (2, 3, 4, 5),
        18,
    ),
    "reduce-opset-13": (
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
            helper.make_node("ReduceMin", ["x"], ["n"], axes=[1, 2], keepdims=0),
            _node("Sub", ("m", "n")),
        ],
        [],
        (2, 3, 4),
        13,
    ),
    "clip-opset-6": ([_node("Clip", min=-0.5, max=0.5)], [], (2, 3, 4), 6),
    "clip-min-only": (
        [_node("Clip", ("x", "lo"))],
        [("lo", np.array(-0.3, np.float32))],
        (2, 3, 4),
        13,
    ),
    "activations": (
        [
            helper.make_node(op, ["x"], [op], **attributes)
            for op, attributes in [
                ("HardSigmoid", {"alpha": 0.3}),
                ("HardSwish", {}),
                ("Selu", {}),
                ("Elu", {"alpha": 0.5}),
                ("LeakyRelu", {"alpha": 0.2}),
                ("Softplus", {}),
                ("Erf", {}),
                ("Sigmoid", {}),
            ]
        ]
        + [
            helper.make_node("Gelu", ["x"], ["Gelu"], approximate="tanh"),
            helper.make_node("PRelu", ["x", "slope"], ["PRelu"]),
            helper.make_node(
                "Concat",
                [
                    "HardSigmoid",
                    "HardSwish",
                    "Selu",
                    "Elu",
                    "LeakyRelu",
                    "Softplus",
                    "Erf",
                    "Sigmoid",
                    "Gelu",
                    "PRelu",
                ],
                ["y"],
                axis=1,
            ),
        ],
        [("slope", _BN[0].reshape(3, 1))],
        (2, 3, 4),
        20,
    ),
    "arithmetic": (
        [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Sqrt", ["a"], ["s"]),
            helper.make_node("Add", ["s", "one"], ["s1"]),
            helper.make_node("Pow", ["a", "e"], ["p"]),
            helper.make_node("Div", ["p", "s1"], ["d"]),
            helper.make_node("Reciprocal", ["s1"], ["r"]),
            helper.make_node("Neg", ["d"], ["n"]),
            helper.make_node("Exp", ["n"], ["ex"]),
            helper.make_node("Log", ["s1"], ["l"]),
            helper.make_node("Mul", ["ex", "l"], ["m"]),
            _node("Sub", ("m", "r")),
        ],
        [("e", np.array(1.5, np.float32)), ("one", np.array(1.0, np.float32))],
        (2, 3, 4),
        17,
    ),
    "shape-gather-where": (
        [
            helper.make_node("Shape", ["x"], ["sh"], start=1),
            helper.make_node("Gather", ["sh", "i"], ["d"]),
            helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
            helper.make_node("Equal", ["xi", "zero"], ["eq"]),
            helper.make_node("Where", ["eq", "x", "df"], ["w"]),
            helper.make_node("Gather", ["w", "j"], ["g"], axis=2),
            _node("Expand", ("g", "es")),
        ],
        [
            ("i", np.array(1, _I64)),
            ("zero", np.array(0, _I64)),
            ("j", np.array([[2, 0]], _I64)),
            ("es", np.array([1, 1, 3, 1], _I64)),
        ],
        (2, 3, 4),
        17,
    ),
    "rounding-and-more": (
        [
            helper.make_node(op, [name], [op], **attributes)
            for (op, attributes), name in zip(
                [
                    ("Relu", {}),
                    ("Tanh", {}),
                    ("Floor", {}),
                    ("Ceil", {}),
                    ("Identity", {}),
                    ("Dropout", {}),
                    ("Softmax", {"axis": 1}),
                ],
                ["x", "Relu", "x", "x", "Tanh", "Identity", "Floor"],
                strict=True,
            )
        ]
        + [helper.make_node("Concat", ["Ceil", "Dropout", "Softmax"], ["y"], axis=-1)],
        [],
        (2, 3, 4),
        13,
    ),
    "constants": (
        [
            helper.make_node("Constant", [], ["c"], value_floats=[0.5, 2.0, 3.0]),
            helper.make_node(
                "ConstantOfShape",
                ["cs"],
                ["z"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5]),
            ),
            helper.make_node("Add", ["x", "c"], ["xc"]),
            _node("Mul", ("xc", "z")),
        ],
        [("cs", np.array([3], _I64))],
        (2, 3, 3),
        17,
    ),
}


@pytest.mark.parametrize("case", list(_REFERENCE_CASES))
def test_operators_agree_with_onnx_reference_implementation(case, tmp_path) -> None:  # type: ignore[no-untyped-def]
    nodes, initializers, shape, opset = _REFERENCE_CASES[case]
    model = _graph(nodes, initializers, shape=shape, opset=opset)
    path = tmp_path / "case.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    actual = load_model(str(path))(torch.from_numpy(x))
    torch.testing.assert_close(
        actual, torch.from_numpy(np.ascontiguousarray(expected)), atol=1e-5, rtol=1e-5
    )


def test_softmax_before_opset_13_normalises_over_every_dimension_from_its_axis(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # onnx's reference implementation has the opset-13 meaning for every opset
    path = tmp_path / "softmax.onnx"
    onnx.save(_graph([_node("Softmax", axis=1)], shape=(2, 3, 4, 5), opset=11), str(path))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(x.reshape(2, 60), 1).reshape(2, 3, 4, 5)
    torch.testing.assert_close(load_model(str(path))(x), expected)


def test_every_operator_of_the_list_has_a_reference_case() -> None:
    used = {node.op_type for nodes, *_ in _REFERENCE_CASES.values() for node in nodes}
    assert used >= SUPPORTED_OPERATORS


def test_weights_stored_beside_the_model_are_read_and_their_absence_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    model = _seeded(DigitsMLP)
    _export(model, path)
    onnx.save(
        onnx.load(str(path)),
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(load_model(str(path))(x), model(x), atol=1e-5, rtol=1e-5)
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"is not a readable ONNX model \(.*model\.onnx\.data"):
        load_model(str(path))


def _write_garbage(path):  # type: ignore[no-untyped-def]
    path.write_bytes(b"garbage" * 10)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_write_garbage, r"model\.onnx: is not a readable ONNX model \(Error parsing message"),
        (
            lambda path: path.write_bytes(b""),
            r"is not a readable ONNX model \(The model does "
            r"not have an ir_version",
        ),
        (
            lambda path: onnx.save(
                _graph(
                    [
                        _node("Hardmax"),
                    ]
                ),
                str(path),
            ),
            r"uses ONNX operators vulnscope cannot convert: Hardmax \(the ones it can are in "
            r"vulnscope\.models\.onnx_program\.SUPPORTED_OPERATORS\)",
        ),
        (
            lambda path: onnx.save(
                _graph(
                    [_node("Pad", ("x", "p"), mode="wrap")], [("p", np.zeros(8, _I64))], opset=19
                ),
                str(path),
            ),
            r"node 'my_pad' \(Pad\) pads in mode 'wrap'",
        ),
        (
            lambda path: onnx.save(
                _graph(
                    [_node("Relu")],
                    inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 3])],
                ),
                str(path),
            ),
            r"input 'x' is not a floating-point tensor \(ONNX type 7\)",
        ),
        (
            lambda path: onnx.save(
                _graph(
                    [_node("Add", ("x", "x2"))],
                    inputs=[
                        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 3])
                        for name in ("x", "x2")
                    ],
                ),
                str(path),
            ),
            r"the graph takes 2 inputs and returns 1 outputs; a classifier takes one batch",
        ),
    ],
    ids=[
        "garbage",
        "empty",
        "unknown-operator",
        "unsupported-setting",
        "integer-input",
        "two-inputs",
    ],
)
def test_unusable_onnx_files_get_one_clear_line(write, message, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    write(path)
    with pytest.raises(ModelError, match=message):
        load_model(str(path))
    assert (
        main(
            [
                "diagnose",
                "--model",
                str(path),
                "--samples",
                "4",
                "--sections",
                "0",
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_without_the_onnx_package_the_error_says_what_to_install(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")  # the package is asked for before the file is read
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(
        ModelError,
        match=r"^\S*model\.onnx: ONNX models need the onnx package: "
        r"pip install 'vulnscope\[onnx\]' \(or: pip install onnx\)$",
    ):
        load_model(str(path))
