"""Gong et al.'s detector: a binary classifier of clean against adversarial inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope.detect.trained import TrainedDetector, adversarial_examples, network, train

__all__ = ["BinaryDetector"]


class BinaryDetector(TrainedDetector):
    r"""A network that tells clean inputs (class 0) from adversarial ones (class 1).

    Gong, Wang and Ku (2017), "Adversarial and clean data are not twins": a separate
    classifier is trained on the clean training inputs and on adversarial examples of the
    classifier at the same inputs. The score is its margin for the adversarial class,

    .. math:: s(x) = b(x)_1 - b(x)_0,

    a logit difference, differentiable in the input (Carlini and Wagner attack exactly
    this).

    Args:
        attack: the attack the adversarial examples come from, ``"fgsm"`` (Gong et al.)
            or ``"pgd"`` (L-inf, 10 steps).
        eps: its L-inf budget (inputs in [0, 1]).
        epochs: training epochs.
        architecture: ``"digits-cnn"`` (a :class:`~vulnscope.models.DigitsCNN` with two
            outputs, 1×8×8 inputs) or ``"mlp"`` (any input shape).

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,) real.

    """

    name = "binary"
    paper = "Gong et al. 2017, Adversarial and clean data are not twins"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The two-output network."""
        self.net_ = network(self.architecture, input_shape, 2)

    def fit_parts(
        self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, generator: torch.Generator
    ) -> None:
        """Train clean ``x`` (label 0) against their adversarial examples (label 1)."""
        adversarial = adversarial_examples(
            model, x, y, attack=self.attack, eps=self.eps, generator=generator
        )
        labels = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
        train(
            self.net_, torch.cat([x, adversarial]), labels, epochs=self.epochs, generator=generator
        )

    def raw_score(self, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """The adversarial logit's margin over the clean one."""
        logits: Tensor = self.net_(x)
        return logits[:, 1] - logits[:, 0]
