"""The attacker's only access to a victim: a counted, budgeted, validated query oracle.

A model-extraction attacker (Tramèr, Zhang, Juels, Reiter and Ristenpart 2016, "Stealing
machine learning models via prediction APIs") sends inputs and reads back what the victim
publishes: probability vectors, or only the predicted class. :class:`BlackBox` is that
interface. It counts every query, refuses a call that would exceed the budget before
spending any of it, and checks every answer, so a victim that returns logits or a wrong
shape fails loudly instead of training a clone on garbage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from vulnscope._validation import check_batch, check_finite, check_int, check_model, describe
from vulnscope.errors import InvalidArgumentError, ModelError

__all__ = ["BlackBox", "QueryBudgetExceededError"]

PROBABILITY_ATOL = 1e-4
"""How far a published row may be from summing to one (as ``check_targets`` allows)."""

_LOGITS_HINT = (
    "if it returns logits, wrap it with softmax or use vulnscope.cloning.defence.Undefended(model)"
)


class QueryBudgetExceededError(InvalidArgumentError):
    """A call to a :class:`BlackBox` would send more queries than ``max_queries`` allows."""


class BlackBox:
    """A victim behind a prediction API: counts queries, enforces a budget, checks answers.

    ``victim`` is any callable from a batch of inputs (B, ...) to either probability
    vectors (B, C) (rows non-negative, summing to one: e.g. softmax outputs, or the
    outputs of a :mod:`vulnscope.cloning` output defence) or class labels (B,), integer
    (a label-only API). Every answer comes back as probability vectors (B, C) float64;
    labels become one-hot vectors.

    Args:
        victim: the model behind the API, called under ``torch.no_grad``.
        max_queries: the most inputs the API will answer in total (``None``: no limit).
        batch_size: inputs sent to ``victim`` per call; larger calls are split.
        num_classes: C, the length of the output vectors. Inferred from the first answer
            of a victim that publishes probability vectors; required for a label-only
            victim, whose answers do not reveal it.

    Attributes:
        queries_used: inputs answered so far.
        labels_only: whether the victim publishes labels instead of probability vectors
            (``None`` until the first answer).

    Shape:
        call: x (B, ...) floating, B >= 1 -> (B, C) float64 probability vectors.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> box = BlackBox(lambda x: torch.softmax(model(x), dim=1), max_queries=10)
        >>> box(torch.rand(4, 3)).shape, box.queries_used, box.queries_left
        (torch.Size([4, 2]), 4, 6)

    """

    def __init__(
        self,
        victim: Callable[[Tensor], Any],
        *,
        max_queries: int | None = None,
        batch_size: int = 256,
        num_classes: int | None = None,
    ) -> None:
        self.victim = check_model(victim, "victim")
        if max_queries is not None:
            max_queries = check_int(max_queries, "max_queries", minimum=0)
            if max_queries < 1:
                raise InvalidArgumentError(f"max_queries must be >= 1, got {max_queries}")
        self.max_queries = max_queries
        self.batch_size = check_int(batch_size, "batch_size")
        self.num_classes = (
            None if num_classes is None else check_int(num_classes, "num_classes", minimum=2)
        )
        self.queries_used = 0
        self.labels_only: bool | None = None

    @property
    def queries_left(self) -> int | None:
        """Queries the budget still allows (``None`` without a budget)."""
        return None if self.max_queries is None else self.max_queries - self.queries_used

    def __repr__(self) -> str:
        return (
            f"BlackBox(queries_used={self.queries_used}, max_queries={self.max_queries}, "
            f"num_classes={self.num_classes}, labels_only={self.labels_only})"
        )

    def __call__(self, x: Tensor) -> Tensor:
        """Query the victim at ``x``: (B, ...) -> published probability vectors (B, C) float64.

        Raises:
            QueryBudgetExceededError: the call would exceed ``max_queries``; nothing is queried.
            ModelError: the victim's answer is not what an API publishes (see the class).

        """
        x = _check_queries(x)
        n = x.shape[0]
        left = self.queries_left
        if left is not None and n > left:
            raise QueryBudgetExceededError(
                f"the query budget is spent: max_queries={self.max_queries}, "
                f"{self.queries_used} used, {n} requested ({left} left)"
            )
        num_classes, labels_only = self.num_classes, self.labels_only
        answers = []
        with torch.no_grad():
            for chunk in torch.split(x, self.batch_size):
                answer, num_classes, labels_only = _check_answer(
                    self.victim(chunk), chunk.shape[0], num_classes, labels_only
                )
                answers.append(answer)
        # only a fully valid call is counted and fixes C and the kind of answer
        self.queries_used += n
        self.num_classes, self.labels_only = num_classes, labels_only
        return torch.cat(answers)


def _check_queries(x: Any) -> Tensor:
    """A batch of inputs: a finite floating tensor (B, ...) with B >= 1."""
    return check_finite(check_batch(x), "x").detach()


def _check_answer(
    answer: Any, n: int, num_classes: int | None, labels_only: bool | None
) -> tuple[Tensor, int, bool]:
    """One answer of the victim as float64 probability vectors, with its C and its kind."""
    if not isinstance(answer, Tensor):
        raise ModelError(
            "victim must return a tensor of probability vectors (B, C) or labels (B,), "
            f"returned {describe(answer)}"
        )
    is_labels = answer.shape == (n,) and not answer.is_floating_point() and not answer.is_complex()
    is_probs = answer.ndim == 2 and answer.shape[0] == n and answer.shape[1] >= 2
    if answer.dtype == torch.bool or not (is_labels or (is_probs and answer.is_floating_point())):
        raise ModelError(
            f"victim must return probability vectors of shape ({n}, C) with C >= 2, floating, "
            f"or integer labels of shape ({n},) for a batch of {n} inputs; "
            f"returned {describe(answer)}"
        )
    if labels_only is not None and is_labels != labels_only:
        kinds = ("probability vectors", "labels")
        raise ModelError(
            f"victim must answer consistently: it returned {kinds[labels_only]} before, "
            f"{kinds[is_labels]} now"
        )
    if is_labels:
        if num_classes is None:
            raise ModelError(
                "victim returns class labels, which do not reveal the number of classes: "
                "construct BlackBox(victim, num_classes=C)"
            )
        low, high = int(answer.min()), int(answer.max())
        if low < 0 or high >= num_classes:
            raise ModelError(
                f"victim must return labels in 0..{num_classes - 1}, returned labels in "
                f"{low}..{high}"
            )
        return F.one_hot(answer.long(), num_classes).double(), num_classes, True
    if num_classes is not None and answer.shape[1] != num_classes:
        raise ModelError(
            f"victim must return {num_classes} probabilities per input, as before, "
            f"returned shape {tuple(answer.shape)}"
        )
    probs = answer.detach().double()
    finite = torch.isfinite(probs)
    if not bool(finite.all()):
        raise ModelError(
            f"victim must return finite probability vectors, returned {int((~finite).sum())} "
            "NaN or infinite entries"
        )
    sums = probs.sum(dim=1)
    smallest = float(probs.min())
    if smallest < 0 or bool(((sums - 1).abs() > PROBABILITY_ATOL).any()):
        raise ModelError(
            "victim must return probability vectors (entries >= 0, rows summing to 1), "
            f"got rows summing to {float(sums.min()):.4g}..{float(sums.max()):.4g} with "
            f"smallest entry {smallest:.4g}; {_LOGITS_HINT}"
        )
    return probs, int(probs.shape[1]), False
