r"""A stacked denoising autoencoder's reconstruction error as an adversarial-example detector.

Vincent et al. (2010) train a stacked denoising autoencoder to map corrupted inputs back
to the data; Meng and Chen (2017, MagNet) score an input by how far an autoencoder
trained on clean data moves it, :math:`\|x - \mathrm{AE}(x)\|_p`, large for inputs
off the data's manifold. This detector is MagNet's reconstruction-error detector with
the stack (:class:`vulnscope.defences.sdae.StackedDenoisingAutoencoder`) as the
autoencoder. Unsupervised: it never sees an adversarial example, nor the classifier.
Differentiable, so Carlini and Wagner's perfect-knowledge attacker puts it in its loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vulnscope._validation import check_choice, check_int, check_real, describe
from vulnscope.defences.magnet import reconstruction_error
from vulnscope.defences.sdae import ACTIVATIONS, CORRUPTIONS, StackedDenoisingAutoencoder
from vulnscope.defences.sdae_training import fit_sdae
from vulnscope.detect.base import Detector, Model
from vulnscope.errors import InvalidArgumentError

__all__ = ["SDAEDetector"]


class SDAEDetector(Detector):
    """Score ``||x - SDAE(x)||_p``, the stack trained on the clean fitting data.

    Args:
        hidden: the code widths above the input (the stack's ``sizes[1:]``).
        activation: ``"sigmoid"`` or ``"relu"``.
        corruption: ``"masking"`` or ``"gaussian"``.
        level: the corruption's ν or σ.
        epochs: pre-training epochs per layer.
        finetune_epochs: epochs of whole-stack fine-tuning.
        lr: Adam's learning rate.
        p: the order of the norm, >= 1 (MagNet uses 1 and 2; 1 separates FGSM and PGD
            at eps = 0.1 on the digits better).

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,).

    """

    name = "sdae"
    paper = (
        "Vincent et al. (2010), stacked denoising autoencoders; the reconstruction error "
        "of Meng and Chen (2017), MagNet"
    )
    differentiable = True

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (128, 64),
        activation: str = "sigmoid",
        corruption: str = "masking",
        level: float = 0.25,
        epochs: int = 20,
        finetune_epochs: int = 20,
        lr: float = 1e-2,
        p: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence) or not hidden:
            raise InvalidArgumentError(
                f"hidden must be a non-empty sequence of code widths, got {describe(hidden)}"
            )
        self.hidden = [check_int(width, f"hidden[{i}]") for i, width in enumerate(hidden)]
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.corruption = check_choice(corruption, "corruption", CORRUPTIONS)
        self.level = check_real(level, "level", minimum=0.0)
        self.epochs = check_int(epochs, "epochs", minimum=0)
        self.finetune_epochs = check_int(finetune_epochs, "finetune_epochs", minimum=0)
        self.lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
        self.p = check_real(p, "p", minimum=1.0)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The stack, ``sizes = (C·H·W, *hidden)``."""
        self.autoencoder = StackedDenoisingAutoencoder(
            sizes=(math.prod(input_shape), *self.hidden), activation=self.activation
        )

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Train the stack on the clean ``x`` (the labels and the classifier are unused)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        fit_sdae(
            self.autoencoder,
            x,
            corruption=self.corruption,
            level=self.level,
            epochs=self.epochs,
            finetune_epochs=self.finetune_epochs,
            lr=self.lr,
            seed=seed,
        )

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """(N,) ``||x - SDAE(x)||_p`` over all of an input's pixels."""
        return reconstruction_error(x, self.autoencoder(x), self.p)
