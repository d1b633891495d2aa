"""Grosse et al.'s detector: the classifier's architecture with an extra "adversarial" class."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope.detect.trained import TrainedDetector, adversarial_examples, network, train

__all__ = ["ExtraClassDetector"]


class ExtraClassDetector(TrainedDetector):
    r"""A classifier with one class more, the adversarial one, trained on clean and attacked data.

    Grosse, Manoharan, Papernot, Backes and McDaniel (2017), "On the (statistical) detection
    of adversarial examples", section 5: a copy of the classifier's architecture with
    :math:`C + 1` outputs is trained on the clean training data (their labels) and on
    adversarial examples of the original classifier at the same inputs (label :math:`C`).
    The score of an input is the probability the new network gives the extra class,

    .. math:: s(x) = \operatorname{softmax}(g(x))_C,

    differentiable in the input. Only the score is used here: the classifier under
    evaluation stays the original one.

    Args:
        attack: the attack the adversarial examples come from, ``"fgsm"`` (Grosse et al.)
            or ``"pgd"`` (L-inf, 10 steps).
        eps: its L-inf budget (inputs in [0, 1]).
        epochs: training epochs over the clean and adversarial data together.
        architecture: ``"digits-cnn"``, a :class:`~vulnscope.models.DigitsCNN` with
            ``C + 1`` outputs (the reference classifier's architecture, 1×8×8 inputs), or
            ``"mlp"``, a two-layer ReLU perceptron for inputs of any shape.

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,) in [0, 1].

    """

    name = "extra-class"
    paper = "Grosse et al. 2017, On the (statistical) detection of adversarial examples"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The network with ``num_classes + 1`` outputs."""
        self.net_ = network(self.architecture, input_shape, num_classes + 1)

    def fit_parts(
        self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, generator: torch.Generator
    ) -> None:
        """Train on ``x`` with labels ``y`` and their adversarial examples with label C."""
        adversarial = adversarial_examples(
            model, x, y, attack=self.attack, eps=self.eps, generator=generator
        )
        extra = torch.full_like(y, self.num_classes)
        train(
            self.net_,
            torch.cat([x, adversarial]),
            torch.cat([y, extra]),
            epochs=self.epochs,
            generator=generator,
        )

    def raw_score(self, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """The probability of the adversarial class."""
        return torch.softmax(self.net_(x), dim=1)[:, -1]
