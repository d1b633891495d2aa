"""Argument checks shared by the whole library.

Each ``check_*`` function returns the cleaned value or raises a :mod:`vulnscope.errors`
exception whose message names the argument, what was expected, and what arrived.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

NORMS: tuple[str, ...] = ("linf", "l2", "l1")


def describe(value: Any) -> str:
    """A short description of an argument for an error message: never a whole array."""
    kind = type(value)
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"a {kind.__module__}.{kind.__name__} of shape {tuple(value.shape)}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind.__name__})"


def check_real(
    value: Any, name: str, *, minimum: float | None = None, exclusive: bool = False
) -> float:
    """A finite real number, optionally bounded below (``> minimum`` if ``exclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name} must be a real number, got {describe(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidArgumentError(f"{name} must be finite, got {result}")
    if minimum is not None:
        if exclusive and result <= minimum:
            raise InvalidArgumentError(f"{name} must be > {minimum}, got {result}")
        if not exclusive and result < minimum:
            raise InvalidArgumentError(f"{name} must be >= {minimum}, got {result}")
    return result


def check_fraction(value: Any, name: str) -> float:
    """A real number in the open-closed interval (0, 1]."""
    result = check_real(value, name, minimum=0.0, exclusive=True)
    if result > 1.0:
        raise InvalidArgumentError(f"{name} must be in (0, 1], got {result}")
    return result


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """An integer (not a bool) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name} must be an integer, got {describe(value)}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """A genuine ``bool`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be True or False, got {describe(value)}")
    return value


def check_eps(value: Any, name: str = "eps") -> float:
    """A perturbation budget: a finite real number >= 0."""
    return check_real(value, name, minimum=0.0)


def check_epsilons(values: Any, name: str = "epsilons") -> list[float]:
    """A non-empty sequence of budgets (a list, tuple or 1-D tensor), each >= 0."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise InvalidArgumentError(
            f"{name} must be a non-empty sequence of budgets, got {values!r}"
        )
    return [check_eps(value, f"{name}[{i}]") for i, value in enumerate(values)]


def check_seed(value: Any, name: str = "seed") -> int | None:
    """``None`` (fresh entropy) or a non-negative integer seed."""
    if value is None:
        return None
    return check_int(value, name, minimum=0)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``, compared case-insensitively."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} must be one of {list(choices)}, got {describe(value)}")
    lowered = value.lower()
    if lowered not in choices:
        raise InvalidArgumentError(f"{name} must be one of {list(choices)}, got {value!r}")
    return lowered


def check_norm(value: Any, name: str = "norm", *, allowed: Sequence[str] = NORMS) -> str:
    """A norm name: ``"linf"``, ``"l2"`` or ``"l1"`` (or a subset of them)."""
    return check_choice(value, name, allowed)


def check_bounds(value: Any, name: str = "bounds") -> tuple[float, float]:
    """Input bounds ``(low, high)``: two finite numbers with ``low < high``."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise InvalidTypeError(f"{name} must be a pair (low, high), got {describe(value)}")
    low = check_real(value[0], f"{name}[0]")
    high = check_real(value[1], f"{name}[1]")
    if not low < high:
        raise InvalidArgumentError(f"{name} must satisfy low < high, got ({low}, {high})")
    return low, high


def check_tensor(value: Any, name: str, *, of: str = "") -> Tensor:
    """A ``torch.Tensor`` (``of`` says what it holds in the message: ``" of labels"``)."""
    if not isinstance(value, Tensor):
        raise InvalidTypeError(f"{name} must be a torch.Tensor{of}, got {describe(value)}")
    return value


def check_finite(value: Tensor, name: str) -> Tensor:
    """A tensor without NaN or infinite entries; the message counts those it has."""
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InvalidArgumentError(f"{name} must be finite, got {bad} NaN or infinite entries")
    return value


def check_batch(value: Any, name: str = "x") -> Tensor:
    """A floating tensor of shape (B, ...) with B >= 1 (not checked: finiteness, bounds)."""
    x = check_tensor(value, name)
    if not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} must be a floating tensor of shape (B, ...) with B >= 1, "
            f"got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    return x


def check_inputs(x: object, *, bounds: tuple[float, float], name: str = "x") -> Tensor:
    """A batch of inputs: a floating tensor of shape (N, ...), N >= 1, finite, inside bounds."""
    x = check_tensor(x, name)
    if not x.is_floating_point():
        raise InvalidTypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"scale integer images to [{bounds[0]}, {bounds[1]}] first"
        )
    if x.ndim < 2:
        raise InvalidArgumentError(
            f"{name} must have shape (N, ...) with a batch dimension first, "
            f"got shape {tuple(x.shape)}; use {name}.unsqueeze(0) for a single sample"
        )
    if x.shape[0] == 0:
        raise InvalidArgumentError(
            f"{name} must hold at least one sample, got shape {tuple(x.shape)}"
        )
    check_finite(x, name)
    low, high = float(x.detach().min()), float(x.detach().max())
    if low < bounds[0] or high > bounds[1]:
        raise InvalidArgumentError(
            f"{name} must lie inside bounds [{bounds[0]}, {bounds[1]}], "
            f"got values in [{low:.6g}, {high:.6g}]"
        )
    return x


def check_labels(y: object, *, n: int, device: torch.device, name: str = "y") -> Tensor:
    """Class labels: an integer tensor of shape (n,), non-negative; returned as int64."""
    y = check_tensor(y, name, of=" of class indices")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise InvalidTypeError(f"{name} must have an integer dtype (int64), got {y.dtype}")
    if y.shape != (n,):
        raise InvalidArgumentError(
            f"{name} must have shape ({n},) to match the batch of {n} inputs, "
            f"got shape {tuple(y.shape)}"
        )
    if bool((y < 0).any()):
        raise InvalidArgumentError(
            f"{name} must hold class indices >= 0, got minimum {int(y.min())}"
        )
    return y.to(device=device, dtype=torch.int64)


def check_targets(
    y: Any, *, n: int, num_classes: int, device: torch.device, name: str = "y"
) -> Tensor:
    """Training targets: (n,) class indices (int64) or (n, C) probability vectors (float).

    Probability targets (a published output, a teacher's soft labels) must be finite,
    non-negative, and sum to one per row within 1e-4; they are returned in float32.
    """
    if isinstance(y, Tensor) and y.is_floating_point():
        if y.shape != (n, num_classes):
            raise InvalidArgumentError(
                f"{name} must have shape ({n}, {num_classes}) (probability targets for "
                f"{n} inputs and {num_classes} classes) or ({n},) (class indices), "
                f"got shape {tuple(y.shape)}"
            )
        if not bool(torch.isfinite(y).all()):
            raise InvalidArgumentError(f"{name} must be finite, got NaN or infinite targets")
        sums = y.double().sum(1)
        if n and (float(y.min()) < 0 or float((sums - 1).abs().max()) > 1e-4):
            raise InvalidArgumentError(
                f"{name} must hold probability vectors (non-negative rows summing to one), "
                f"got minimum {float(y.min()):.3g} and row sums in "
                f"[{float(sums.min()):.6g}, {float(sums.max()):.6g}]"
            )
        return y.to(device=device, dtype=torch.float32)
    labels = check_labels(y, n=n, device=device, name=name)
    check_labels_in_range(labels, num_classes, name)
    return labels


def check_labels_in_range(y: Tensor, num_classes: int, name: str = "y") -> None:
    """Labels must index one of the model's ``num_classes`` outputs."""
    if y.numel() and int(y.max()) >= num_classes:
        raise InvalidArgumentError(
            f"{name} must hold class indices < {num_classes} (the model has {num_classes} "
            f"outputs), got maximum {int(y.max())}"
        )


def check_model(model: Any, name: str = "model") -> Callable[[Tensor], Tensor]:
    """A callable mapping a batch of inputs to a batch of logits (an ``nn.Module`` usually)."""
    if not callable(model):
        raise InvalidTypeError(
            f"{name} must be a callable such as a torch.nn.Module, got {describe(model)}"
        )
    return model  # type: ignore[no-any-return]


def check_model_matches_inputs(model: Any, x: Tensor, name: str = "model") -> None:
    """The model's floating parameters must share ``x``'s device and dtype."""
    if not isinstance(model, torch.nn.Module):
        return
    for parameter in model.parameters():
        if not parameter.is_floating_point():
            continue
        if parameter.device != x.device:
            raise ModelError(
                f"{name} is on {parameter.device} but x is on {x.device}; "
                f"move one of them, e.g. x.to('{parameter.device}')"
            )
        if parameter.dtype != x.dtype:
            raise InvalidTypeError(
                f"x has dtype {x.dtype} but {name}'s parameters are {parameter.dtype}; "
                f"convert with x.to({parameter.dtype})"
            )
        return


def check_logits(logits: Any, n: int, name: str = "model") -> Tensor:
    """A model output: a floating tensor of shape (n, C) with C >= 2."""
    if not isinstance(logits, Tensor):
        raise ModelError(f"{name} must return a tensor of logits, returned {describe(logits)}")
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ModelError(
            f"{name} must return logits of shape (N, C) = ({n}, C) with C >= 2 classes, "
            f"returned shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise ModelError(f"{name} must return floating logits, returned dtype {logits.dtype}")
    return logits
