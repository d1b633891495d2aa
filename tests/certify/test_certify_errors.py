"""certify and certified_radius refuse bad arguments with an error naming the argument."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.certify import certified_radius, certify
from vulnscope.errors import InvalidArgumentError, InvalidTypeError


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()


X = torch.full((2, 1, 2, 2), 0.5)
Y = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"eps": 0.0}, InvalidArgumentError, r"eps must be > 0.0, got 0.0"),
        ({"eps": -0.1}, InvalidArgumentError, r"eps must be > 0.0, got -0.1"),
        ({"eps": float("nan")}, InvalidArgumentError, r"eps must be finite"),
        ({"eps": "0.1"}, InvalidTypeError, r"eps must be a real number"),
        ({"inputs": X + 0.6}, InvalidArgumentError, r"inputs must lie inside bounds \[0.0, 1.0\]"),
        ({"bounds": (0.6, 1.0)}, InvalidArgumentError, r"inputs must lie inside bounds \[0.6"),
        ({"bounds": (1.0, 0.0)}, InvalidArgumentError, r"bounds must satisfy low < high"),
        ({"inputs": X.numpy()}, InvalidTypeError, r"inputs must be a torch.Tensor, got ndarray"),
        ({"inputs": X.long()}, InvalidTypeError, r"inputs must have a floating dtype"),
        ({"inputs": X[:0], "labels": Y[:0]}, InvalidArgumentError, r"at least one sample"),
        ({"labels": Y[:1]}, InvalidArgumentError, r"labels must have shape \(2,\)"),
        ({"labels": Y[:, None]}, InvalidArgumentError, r"labels must have shape \(2,\)"),
        ({"labels": Y.float()}, InvalidTypeError, r"labels must have an integer dtype"),
        ({"labels": torch.tensor([0, 3])}, InvalidArgumentError, r"labels must hold class .*< 3"),
        ({"method": "milp"}, InvalidArgumentError, r"method must be one of .*'dual'\], got 'milp'"),
        ({"norm": "l1"}, InvalidArgumentError, r"norm must be one of \['linf', 'l2'\], got 'l1'"),
        ({"batch_size": 0}, InvalidArgumentError, r"batch_size must be an integer >= 1"),
        ({"model": lambda x: x}, InvalidTypeError, r"model must be a torch.nn.Module"),
    ],
)
def test_certify_names_the_bad_argument(model, changes, error, words):
    arguments = {"model": model, "inputs": X, "labels": Y, "eps": 0.1, **changes}
    with pytest.raises(error, match=words):
        certify(
            arguments.pop("model"), arguments.pop("inputs"), arguments.pop("labels"), **arguments
        )


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"tol": 0.0}, r"tol must be > 0.0, got 0.0"),
        ({"max_eps": -1.0}, r"max_eps must be > 0.0, got -1.0"),
        ({"tol": 0.5, "max_eps": 0.2}, r"tol must be smaller than max_eps \(0.2\), got 0.5"),
        ({"method": "exact"}, r"method must be one of"),
        ({"norm": "l0"}, r"norm must be one of"),
    ],
)
def test_certified_radius_names_the_bad_argument(model, changes, words):
    with pytest.raises(InvalidArgumentError, match=words):
        certified_radius(model, X, Y, **changes)


def test_the_certificate_records_what_was_certified(model):
    result = certify(model, X, Y, eps=0.25, norm="L2", method="dual")
    assert (result.method, result.norm, result.eps) == ("dual", "l2", 0.25)
    assert result.certified.dtype == torch.bool and result.certified.shape == (2,)
    assert result.margins.shape == (2, 3)
    assert result.accuracy == float(result.certified.float().mean())
