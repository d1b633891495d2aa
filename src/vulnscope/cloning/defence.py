"""The output-defence contract: a classifier that publishes (possibly poisoned) probabilities.

A defence wraps a victim classifier. It computes the true probabilities
``softmax(model(x))`` and publishes what :meth:`OutputDefence.poison` makes of them;
:meth:`OutputDefence.publish` also reports how far each published vector is from the true
one in L1, the size of the poisoning. The base class owns that call path (validation, eval
mode, float64); each defence writes only ``poison``.

Randomness is derived per query from ``(seed, the bytes of the input row)``
(:func:`vulnscope._random.row_seeds`): the same query always gets the same answer,
whatever else is in its batch, so an attacker cannot remove random noise by asking the
same question twice and averaging.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_inputs,
    check_logits,
    check_model,
    check_real,
    check_seed,
)
from vulnscope.cloning.simplex import check_budget
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.state import preserved_model_state

__all__ = [
    "OutputDefence",
    "Published",
    "Undefended",
    "check_defence_budget",
]


@dataclass(frozen=True)
class Published:
    """What a defence publishes for a batch of queries.

    Attributes:
        probs: (B, C) float64 published probability vectors.
        true_probs: (B, C) float64 ``softmax(model(x))``, what an undefended model publishes.
        l1: (B,) float64 ``||probs - true_probs||_1`` per query.

    """

    probs: Tensor
    true_probs: Tensor
    l1: Tensor


def check_defence_budget(budget: Any, model: Any) -> float:
    """A budget checked as far as the model allows before it has been called.

    Against ``model.num_classes`` where the model has it (a :class:`~vulnscope.rbm.DeepRBM`
    does), otherwise only ``0 < budget < 2`` (the L1 diameter of the simplex): the bound
    ``2(1 - 1/C)`` is checked again when the number of classes is known.
    """
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
        return check_budget(budget, classes)
    value = check_real(budget, "budget", minimum=0.0, exclusive=True)
    if value >= 2.0:
        raise InvalidArgumentError(
            "budget must be < 2(1 - 1/C) for C classes (and so < 2): two probability "
            f"vectors with the same arg-max are closer than that in L1, got {value:.6g}"
        )
    return value


class OutputDefence(nn.Module, abc.ABC):
    """Base class of every output defence: wraps a classifier, publishes probabilities.

    Calling the defence (``defence(x)``, i.e. :meth:`forward`) returns the published
    probabilities; :meth:`publish` returns them with the true ones and the per-query L1
    size of the poisoning. Subclasses implement :meth:`poison` and set
    ``preserves_argmax``.

    Args:
        model: the victim classifier, (B, ...) -> (B, C) logits (log-probabilities are
            valid logits: a :class:`~vulnscope.rbm.DeepRBM` plugs in as it is). It is put
            in eval mode for each call and left in the mode it was found in.
        seed: key of the defence's randomness (:func:`vulnscope._random.row_seeds`);
            ``None`` draws a secret key once, when the defence is built, so its answers
            are still consistent.

    Attributes:
        preserves_argmax: whether every published vector has the arg-max class of the true
            one (the defence never changes the label a query gets).
        budget: the target L1 size of the poisoning, or ``None`` for defences that have no
            L1 parameter.

    """

    preserves_argmax: ClassVar[bool]
    budget: float | None = None

    def __init__(self, model: Callable[[Tensor], Tensor], *, seed: int | None = 0) -> None:
        super().__init__()
        self.model = check_model(model)
        self.seed = check_seed(seed)
        self._key = secrets.randbits(63) if self.seed is None else self.seed

    @abc.abstractmethod
    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """The published vectors for the true ones: (B, C) float64 -> (B, C) float64.

        Args:
            probs: (B, C) true probabilities of the queries.
            x: (B, ...) the queries themselves (for defences that need the model's
                gradients or per-query randomness).

        """

    def true_probabilities(self, x: Tensor) -> Tensor:
        """``softmax(model(x))`` in float64, without gradients: (B, ...) -> (B, C)."""
        x = check_inputs(x, bounds=(-math.inf, math.inf))
        with torch.no_grad(), preserved_model_state(self.model):
            if isinstance(self.model, nn.Module):
                self.model.eval()
            logits = check_logits(self.model(x), x.shape[0])
        return logits.detach().to(torch.float64).softmax(-1)

    def publish(self, x: Tensor) -> Published:
        """Answer a batch of queries: the published and true probabilities and their L1."""
        true = self.true_probabilities(x)
        probs = self.poison(true, x)
        return Published(probs=probs, true_probs=true, l1=(probs - true).abs().sum(-1))

    def forward(self, x: Tensor) -> Tensor:
        """The published probabilities: (B, ...) -> (B, C) float64."""
        return self.publish(x).probs

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record: the defence's name, budget and other hyperparameters."""
        names = [
            name
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        return {
            "name": type(self).__name__,
            "budget": self.budget,
            "parameters": {name: _json_value(getattr(self, name)) for name in names},
        }

    def extra_repr(self) -> str:
        """The hyperparameters, shown by ``repr`` after the wrapped model."""
        record = self.describe()
        fields = {"budget": record["budget"], **record["parameters"]}
        return ", ".join(f"{name}={value!r}" for name, value in fields.items())


def _json_value(value: Any) -> Any:
    """A hyperparameter as JSON can hold it: numbers and strings as they are, else a name."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Tensor):
        return f"tensor of shape {list(value.shape)}"
    return type(value).__name__


class Undefended(OutputDefence):
    """No defence: publishes the true probabilities ``softmax(model(x))``.

    The reference every defence is measured against.

    Args:
        model: the victim classifier (logits out).

    Example:
        >>> Undefended(lambda x: 2.0 * x)(torch.eye(2))
        tensor([[0.8808, 0.1192],
                [0.1192, 0.8808]], dtype=torch.float64)

    """

    preserves_argmax = True

    def __init__(self, model: Callable[[Tensor], Tensor]) -> None:
        super().__init__(model)

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """The true probabilities, unchanged."""
        return probs
