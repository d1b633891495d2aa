"""Bad input gets a clear library error that names the argument; suspicious models a warning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import APGD, BIM, FGSM, PGD
from vulnscope.errors import (
    InvalidArgumentError,
    InvalidTypeError,
    ModelError,
    VulnscopeError,
    VulnscopeWarning,
)

SHAPE = (1, 2, 3)


@pytest.fixture
def model():
    return tiny_classifier(0, SHAPE, classes=4)


@pytest.fixture
def x():
    return random_inputs(0, 3, SHAPE, (0.0, 1.0))


@pytest.fixture
def y():
    return torch.tensor([0, 1, 2])


def _with_nan(x):
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda x: _with_nan(x), InvalidArgumentError, "x must be finite, got 1 NaN or infinite"),
        (lambda x: x.clone().fill_(float("inf")), InvalidArgumentError, "x must be finite"),
        (
            lambda x: x[0].flatten(),
            InvalidArgumentError,
            r"x must have shape \(N, \.\.\.\).*got shape \(6,\)",
        ),
        (
            lambda x: (x * 255).to(torch.uint8),
            InvalidTypeError,
            "x must have a floating dtype.*torch.uint8",
        ),
        (
            lambda x: x + 1.5,
            InvalidArgumentError,
            r"x must lie inside bounds \[0.0, 1.0\], got values in",
        ),
        (
            lambda x: x.numpy(),
            InvalidTypeError,
            r"x must be a torch.Tensor, got a numpy.ndarray of shape \(3, 1, 2, 3\)$",
        ),
        (lambda x: x[:0], InvalidArgumentError, "x must hold at least one sample"),
    ],
    ids=["nan", "inf", "no-batch-dim", "integer-dtype", "out-of-bounds", "numpy", "empty"],
)
def test_bad_inputs_are_named(model, x, y, mutate, error, message):
    with pytest.raises(error, match=message):
        PGD(eps=0.1, steps=2)(model, mutate(x), y)


@pytest.mark.parametrize(
    ("labels", "error", "message"),
    [
        (
            torch.tensor([0, 1, 4]),
            InvalidArgumentError,
            r"y must hold class indices < 4 \(the model has 4 outputs\), got maximum 4",
        ),
        (
            torch.tensor([0, -1, 2]),
            InvalidArgumentError,
            "y must hold class indices >= 0, got minimum -1",
        ),
        (
            torch.tensor([0, 1]),
            InvalidArgumentError,
            r"y must have shape \(3,\) to match the batch of 3 inputs, got shape \(2,\)",
        ),
        (torch.tensor([0.0, 1.0, 2.0]), InvalidTypeError, "y must have an integer dtype.*float32"),
        ([0, 1, 2], InvalidTypeError, "y must be a torch.Tensor"),
    ],
    ids=["out-of-range", "negative", "batch-mismatch", "float-labels", "list"],
)
def test_bad_labels_are_named(model, x, labels, error, message):
    with pytest.raises(error, match=message):
        FGSM(eps=0.1)(model, x, labels)


def test_int32_labels_are_accepted(model, x):
    result = FGSM(eps=0.1)(model, x, torch.tensor([0, 1, 2], dtype=torch.int32))
    assert result.success.shape == (3,)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: PGD(eps=-0.1), InvalidArgumentError, "eps must be >= 0.0, got -0.1"),
        (lambda: PGD(eps=float("nan")), InvalidArgumentError, "eps must be finite"),
        (lambda: PGD(eps=True), InvalidTypeError, "eps must be a real number, got True"),
        (lambda: PGD(eps="0.1"), InvalidTypeError, "eps must be a real number"),
        (
            lambda: PGD(norm="l3", eps=0.1),
            InvalidArgumentError,
            r"norm must be one of \['linf', 'l2', 'l1'\], got 'l3'",
        ),
        (
            lambda: APGD(norm="l1", eps=0.1),
            InvalidArgumentError,
            r"norm must be one of \['linf', 'l2'\], got 'l1'",
        ),
        (
            lambda: PGD(eps=0.1, steps=0),
            InvalidArgumentError,
            "steps must be an integer >= 1, got 0",
        ),
        (lambda: PGD(eps=0.1, steps=2.5), InvalidTypeError, "steps must be an integer"),
        (
            lambda: PGD(eps=0.1, step_size=0.0),
            InvalidArgumentError,
            "step_size must be > 0.0, got 0.0",
        ),
        (
            lambda: PGD(eps=0.1, restarts=3, random_start=False),
            InvalidArgumentError,
            "restarts=3 needs random_start=True",
        ),
        (
            lambda: PGD(eps=0.1, loss="hinge"),
            InvalidArgumentError,
            r"loss must be one of \['ce', 'margin', 'dlr'\], got 'hinge'",
        ),
        (
            lambda: PGD(eps=0.1, bounds=(1.0, 0.0)),
            InvalidArgumentError,
            r"bounds must satisfy low < high, got \(1.0, 0.0\)",
        ),
        (
            lambda: PGD(eps=0.1, bounds=0.5),
            InvalidTypeError,
            r"bounds must be a pair \(low, high\)",
        ),
        (
            lambda: PGD(eps=0.1, seed=-1),
            InvalidArgumentError,
            "seed must be an integer >= 0, got -1",
        ),
        (lambda: PGD(eps=0.1, targeted="yes"), InvalidTypeError, "targeted must be True or False"),
        (lambda: APGD(eps=0.1, rho=1.5), InvalidArgumentError, r"rho must be in \(0, 1\], got 1.5"),
        (
            lambda: BIM(eps=0.1, steps=-2),
            InvalidArgumentError,
            "steps must be an integer >= 1, got -2",
        ),
        (lambda: FGSM(eps=0.1, l1_sparsity=0.0), InvalidArgumentError, "l1_sparsity must be > 0.0"),
    ],
)
def test_bad_hyperparameters_are_named_at_construction(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_errors_are_library_errors_and_builtins():
    with pytest.raises(VulnscopeError):
        PGD(eps=-1.0)
    with pytest.raises(ValueError):
        PGD(eps=-1.0)
    with pytest.raises(TypeError):
        PGD(eps="big")


def test_missing_eps_says_how_to_set_it(model, x, y):
    with pytest.raises(InvalidArgumentError, match=r"eps is not set: construct PGD\(eps=\.\.\.\)"):
        PGD()(model, x, y)


def test_targeted_attack_needs_a_target(model, x, y):
    with pytest.raises(InvalidArgumentError, match="target is required"):
        PGD(eps=0.1, targeted=True)(model, x, y)
    with pytest.raises(InvalidArgumentError, match="target is only used by targeted attacks"):
        PGD(eps=0.1)(model, x, y, target=y)
    with pytest.raises(InvalidArgumentError, match=r"target must hold class indices < 4"):
        PGD(eps=0.1, targeted=True)(model, x, y, target=torch.tensor([0, 9, 1]))


def test_model_with_wrong_output_shape_is_a_model_error(x, y):
    with pytest.raises(
        ModelError, match=r"must return logits of shape \(N, C\) = \(3, C\).*returned shape \(3,\)"
    ):
        PGD(eps=0.1)(lambda inputs: inputs.flatten(1).sum(1), x, y)
    with pytest.raises(ModelError, match="must return a tensor of logits"):
        PGD(eps=0.1)(lambda inputs: [inputs], x, y)


def test_model_that_is_not_callable_is_named(x, y):
    with pytest.raises(InvalidTypeError, match="model must be a callable"):
        PGD(eps=0.1)("resnet", x, y)


def test_dtype_mismatch_between_model_and_inputs_is_explained(model, x, y):
    with pytest.raises(
        InvalidTypeError,
        match=r"x has dtype torch.float32 but model's parameters are torch.float64",
    ):
        PGD(eps=0.1)(model, x.float(), y)


def test_unknown_hyperparameter_in_replace_is_named():
    with pytest.raises(InvalidArgumentError, match="PGD has no hyperparameter 'epsilon'"):
        PGD(eps=0.1).replace(epsilon=0.2)


def test_model_returning_probabilities_gets_a_warning(x, y):
    model = nn.Sequential(tiny_classifier(0, SHAPE), nn.Softmax(dim=1))
    with pytest.warns(VulnscopeWarning, match="look like probabilities.*remove the final softmax"):
        PGD(eps=0.1, steps=2)(model, x, y)


@pytest.mark.parametrize(
    "layer", [nn.Dropout(0.5), nn.BatchNorm1d(4)], ids=["dropout", "batchnorm"]
)
def test_model_in_training_mode_with_stochastic_layers_gets_a_warning(x, y, layer):
    model = nn.Sequential(tiny_classifier(0, SHAPE), layer).double().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(
        VulnscopeWarning, match="training mode with (Dropout|BatchNorm1d).*model.eval"
    ):
        PGD(eps=0.1, steps=2)(model, x, y)
    assert model.training
    for key, value in model.state_dict().items():  # batch-norm running statistics restored
        assert torch.equal(value, buffers[key]), key


def test_model_in_eval_mode_gets_no_warning(model, x, y):
    # pytest is configured to turn any VulnscopeWarning into an error
    PGD(eps=0.1, steps=2)(nn.Sequential(model, nn.Dropout(0.5)).eval(), x, y)
