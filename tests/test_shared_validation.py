"""The shared argument checks, and that every caller applies the same rule and wording."""

from __future__ import annotations

import math

import pytest
import torch

from vulnscope._simplex import project_to_simplex
from vulnscope._validation import check_batch, check_finite, check_tensor
from vulnscope.cloning.generation_fisher import check_output_vectors
from vulnscope.cloning.oracle import BlackBox
from vulnscope.cloning.simplex import check_probabilities, perturb_along
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.training import train_classifier


def test_check_tensor_names_the_argument_and_what_arrived():
    value = torch.zeros(2)
    assert check_tensor(value, "x") is value
    with pytest.raises(InvalidTypeError, match=r"^y must be a torch.Tensor of labels, got \[1\]"):
        check_tensor([1], "y", of=" of labels")


def test_check_finite_counts_the_bad_entries():
    value = torch.tensor([1.0, math.nan, math.inf, -math.inf])
    with pytest.raises(InvalidArgumentError, match=r"^z must be finite, got 3 NaN or infinite"):
        check_finite(value, "z")
    ok = torch.ones(3)
    assert check_finite(ok, "z") is ok


@pytest.mark.parametrize(
    "value",
    [torch.zeros(3), torch.zeros(0, 2), torch.zeros(2, 2, dtype=torch.int64)],
    ids=["no batch axis", "empty batch", "integer"],
)
def test_check_batch_wants_a_floating_batch(value):
    with pytest.raises(InvalidArgumentError, match=r"^x must be a floating tensor of shape \(B"):
        check_batch(value)
    with pytest.raises(InvalidTypeError, match=r"x must be a torch\.Tensor"):
        check_batch(value.tolist())


_NAN_ROW = torch.tensor([[0.5, math.nan, 0.5]])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: project_to_simplex(_NAN_ROW), "z"),
        (lambda: check_probabilities(_NAN_ROW), "probs"),
        (lambda: check_output_vectors(_NAN_ROW, 3), "probs"),
        (
            lambda: perturb_along(torch.tensor([[0.5, 0.3, 0.2]]), _NAN_ROW, budget=0.1),
            "directions",
        ),
        (lambda: BlackBox(torch.nn.Flatten())(torch.full((2, 1, 2), math.nan)), "x"),
    ],
    ids=["project_to_simplex", "check_probabilities", "generation", "perturb_along", "oracle"],
)
def test_every_caller_words_a_non_finite_tensor_alike(call, name):
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be finite, got \d+ NaN or inf"):
        call()


def test_training_refuses_a_non_tensor_batch_by_type():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(InvalidTypeError, match=r"x must be a torch\.Tensor"):
        train_classifier(model, [[0.0] * 4], torch.zeros(1, dtype=torch.long))
