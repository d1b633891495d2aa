r"""The reverse sigmoid perturbation: outputs whose log-odds mislead a cloner's loss.

Lee, Edwards, Molloy and Srivastava (2019), "Defending against NN model stealing attacks
using deceptive perturbations" (IEEE S&P Workshops). Each published probability is

.. math:: \hat y_j = \alpha \Big( y_j - \beta \big( \sigma(\gamma\, \sigma^{-1}(y_j))
          - \tfrac12 \big) \Big),

negative entries clipped to zero and ``α`` renormalising the row to sum one. The
correction term is a sigmoid in the log-odds of ``y_j`` that vanishes at ``y_j = 1/2``;
a cloner fitting the published vectors with cross-entropy inverts the sigmoid and so
learns logits pushed away from the victim's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vulnscope._validation import check_real, describe
from vulnscope.cloning.defence import OutputDefence
from vulnscope.cloning.simplex import check_budget
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["ReverseSigmoid", "reverse_sigmoid"]

_LARGEST_BETA = 2.0**40
"""Where the search for a β that spends the budget gives up (the map has settled)."""

_BISECTIONS = 200


def reverse_sigmoid(probs: Tensor, beta: float, gamma: float) -> Tensor:
    """The reverse sigmoid perturbation of probability vectors: (B, C) -> (B, C) float64.

    Args:
        probs: (B, C) probability vectors.
        beta: ``β >= 0``, the size of the correction (0 leaves ``probs`` unchanged).
        gamma: ``γ > 0``, the steepness of the sigmoid in the log-odds.

    Example:
        >>> reverse_sigmoid(torch.tensor([[0.5, 0.3, 0.2]]), beta=0.0, gamma=1.0)
        tensor([[0.5000, 0.3000, 0.2000]], dtype=torch.float64)

    """
    y = probs.to(torch.float64)
    shifted = y - beta * (torch.sigmoid(gamma * torch.logit(y)) - 0.5)
    clipped = shifted.clamp_min(0.0)
    # Never all zero: at most one entry exceeds 1/2 and the others get a correction >= 0.
    return clipped / clipped.sum(-1, keepdim=True)


class ReverseSigmoid(OutputDefence):
    """Reverse sigmoid perturbation of the published probabilities.

    Lee, Edwards, Molloy and Srivastava (2019), "Defending against NN model stealing
    attacks using deceptive perturbations" (:func:`reverse_sigmoid`; module docstring for
    the formula). ``beta`` is given directly, or found by bisection so that the mean L1
    distance between published and true outputs over ``calibration`` inputs equals
    ``budget``.

    The map is not monotone in ``y_j`` once ``βγ > 1``: its slope
    ``1 - βγ σ'(γ σ⁻¹(y)) / (y (1 - y))`` is ``1 - βγ`` at ``y = 1/2``. A smaller
    probability can then be published above a larger one, so the arg-max class can
    change, and ``preserves_argmax`` is False.

    Args:
        model: the victim classifier (logits out).
        beta: ``β >= 0``; leave None to calibrate it from ``budget``.
        gamma: ``γ > 0``.
        budget: the mean L1 size of the poisoning over ``calibration``, in
            ``(0, 2(1 - 1/C))``; with ``beta=None`` only.
        calibration: (N, ...) inputs of the model to calibrate ``β`` on; with ``budget``.

    Attributes:
        beta_: the ``β`` in use: ``beta``, or the calibrated value.

    Shape:
        Input (B, ...) queries; output (B, C) float64 probability vectors.

    Example:
        >>> defence = ReverseSigmoid(lambda x: 3.0 * x, beta=0.2)
        >>> defence(torch.eye(2))
        tensor([[0.8621, 0.1379],
                [0.1379, 0.8621]], dtype=torch.float64)

    """

    preserves_argmax = False

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        *,
        beta: float | None = None,
        gamma: float = 1.0,
        budget: float | None = None,
        calibration: Tensor | None = None,
    ) -> None:
        super().__init__(model)
        self.gamma = check_real(gamma, "gamma", minimum=0.0, exclusive=True)
        self.calibration = calibration
        if beta is not None:
            if budget is not None or calibration is not None:
                raise InvalidArgumentError(
                    "beta and budget/calibration are alternatives: give beta, or budget "
                    f"and calibration inputs to find it from, got beta={beta!r}, "
                    f"budget={budget!r} and calibration {describe(calibration)}"
                )
            self.beta: float | None = check_real(beta, "beta", minimum=0.0)
            self.beta_ = self.beta
            return
        if budget is None or calibration is None:
            raise InvalidArgumentError(
                "ReverseSigmoid needs beta, or budget and calibration inputs to find beta "
                f"from, got budget={budget!r} and calibration {describe(calibration)}"
            )
        if not isinstance(calibration, Tensor):
            raise InvalidTypeError(
                f"calibration must be a torch.Tensor of inputs, got {describe(calibration)}"
            )
        self.beta = None
        probs = self.true_probabilities(calibration)
        self.budget = check_budget(budget, probs.shape[1])
        self.beta_ = self._calibrate(probs, self.budget)

    def _calibrate(self, probs: Tensor, budget: float) -> float:
        """The β whose mean L1 over ``probs`` is ``budget``: doubling, then bisection."""

        def mean_l1(beta: float) -> float:
            return float((reverse_sigmoid(probs, beta, self.gamma) - probs).abs().sum(-1).mean())

        low, high = 0.0, 1.0
        while mean_l1(high) < budget:
            if high >= _LARGEST_BETA:
                raise InvalidArgumentError(
                    f"budget {budget:.6g} cannot be reached: with gamma={self.gamma:g} the "
                    f"mean L1 over the calibration set levels off at {mean_l1(high):.6g}; "
                    "ask for less, or change gamma"
                )
            low, high = high, 2.0 * high
        for _ in range(_BISECTIONS):
            middle = 0.5 * (low + high)
            if not low < middle < high:
                break
            if mean_l1(middle) >= budget:
                high = middle
            else:
                low = middle
        return low if budget - mean_l1(low) < mean_l1(high) - budget else high

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """The reverse sigmoid of each output with the calibrated (or given) β."""
        return reverse_sigmoid(probs, self.beta_, self.gamma)

    def describe(self) -> dict[str, Any]:
        """The JSON record, with the ``β`` in use."""
        record = super().describe()
        record["parameters"]["beta_"] = self.beta_
        return record
