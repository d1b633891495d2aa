"""Metzen et al.'s detector: a small subnetwork on an inner layer of the frozen classifier."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vulnscope._validation import check_int
from vulnscope.detect.base import Detector
from vulnscope.detect.statistics_hidden import hidden_output
from vulnscope.detect.trained import adversarial_examples, check_training, train
from vulnscope.errors import InvalidArgumentError

__all__ = ["SubnetworkDetector"]


class SubnetworkDetector(Detector):
    r"""A convolutional detector on the activations of one layer of the (frozen) classifier.

    Metzen, Genewein, Fischer and Bischoff (2017), "On detecting adversarial
    perturbations": a detector subnetwork branches off the classifier at an inner layer
    and is trained, with the classifier frozen, to tell the activations of clean inputs
    from those of adversarial examples made by an iterative attack (here L-inf PGD). The
    subnetwork is theirs scaled down: two 3×3 convolutions (``width`` channels, ReLU),
    global average pooling and two logits; a layer with flat (N, D) output is read as D
    channels of a 1×1 map. The score is the adversarial logit's margin,

    .. math:: s(x) = d(h_\ell(x))_1 - d(h_\ell(x))_0,

    differentiable in the input through the classifier's first layers.

    Args:
        layer: the classifier's submodule whose output the detector reads (default
            ``"relu1"``: the 16×8×8 maps after the first convolution of
            :class:`~vulnscope.models.DigitsCNN`).
        attack: ``"pgd"`` (L-inf, 10 steps; Metzen et al.'s iterative attack) or ``"fgsm"``.
        eps: its L-inf budget (inputs in [0, 1]).
        epochs: training epochs.
        width: channels of the subnetwork's convolutions.

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,) real.

    """

    name = "subnetwork"
    paper = "Metzen et al. 2017, On detecting adversarial perturbations"

    def __init__(
        self,
        *,
        layer: str = "relu1",
        attack: str = "pgd",
        eps: float = 0.1,
        epochs: int = 20,
        width: int = 32,
    ) -> None:
        super().__init__()
        if not isinstance(layer, str) or not layer:
            raise InvalidArgumentError(f"layer must name a submodule, got {layer!r}")
        self.layer = layer
        self.attack, self.eps, self.epochs, _ = check_training(
            attack=attack, eps=eps, epochs=epochs
        )
        self.width = check_int(width, "width")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The subnetwork; its first convolution takes its channels from the layer (lazily)."""
        self.net_ = nn.Sequential(
            nn.LazyConv2d(self.width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(self.width, self.width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(self.width, 2),
        )

    def _maps(self, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        hidden, _ = hidden_output(model, x, self.layer)
        return hidden if hidden.ndim == 4 else hidden.flatten(1)[:, :, None, None]

    def fit_parts(
        self, model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, generator: torch.Generator
    ) -> None:
        """Train on the layer's activations of clean ``x`` (0) and adversarial examples (1)."""
        adversarial = adversarial_examples(
            model, x, y, attack=self.attack, eps=self.eps, generator=generator
        )
        with torch.no_grad():
            maps = self._maps(model, torch.cat([x, adversarial])).detach()
        self.net_.to(x.device)(maps[:1])  # the lazy convolution takes its channels here
        labels = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
        train(self.net_, maps, labels, epochs=self.epochs, generator=generator)

    def raw_score(self, model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """The adversarial logit's margin on the layer's activations of ``x``."""
        logits: Tensor = self.net_(self._maps(model, x))
        return logits[:, 1] - logits[:, 0]
