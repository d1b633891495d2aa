r"""MagNet's reconstruction-error detector through the detector contract.

Meng and Chen (2017), "MagNet: a two-pronged defense against adversarial examples": an
autoencoder trained on clean data reconstructs inputs near the data manifold well, so
:math:`\|x - \mathrm{AE}(x)\|_p` is large for inputs far from it. The autoencoder, its
training and the score are :mod:`vulnscope.defences.magnet`'s; this class only fits them
to the contract (the whole MagNet, with its reformer, stays in the defences).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_int, check_real
from vulnscope.defences.magnet import DigitsAutoencoder, reconstruction_error, train_autoencoder
from vulnscope.detect.base import Detector
from vulnscope.errors import InvalidArgumentError

__all__ = ["ReconstructionDetector"]

Model = Callable[[Tensor], Tensor]


class ReconstructionDetector(Detector):
    r"""Scores an input by its autoencoder's reconstruction error (MagNet's detector).

    A :class:`~vulnscope.defences.magnet.DigitsAutoencoder` is trained on the clean
    inputs as a denoising autoencoder
    (:func:`~vulnscope.defences.magnet.train_autoencoder`), and

    .. math:: s(x) = \|x - \mathrm{AE}(x)\|_p

    (:func:`~vulnscope.defences.magnet.reconstruction_error`). Differentiable. The
    classifier plays no part in the score.

    Args:
        p: the norm's order, >= 1 (MagNet's detector I uses 1, detector II 2).
        channels: width of the autoencoder's convolutions.
        pool: pool between encoder and decoder (MagNet's detector I; without it, II).
        epochs: training passes over the clean inputs.
        noise: standard deviation of the training noise (MagNet: 0.1).
        lr: Adam's learning rate (10x MagNet's default: the sigmoid network learns the
            small digits set slowly at 1e-3).
        batch_size: inputs per step.

    Shape:
        inputs (N, 1, H, W) in [0, 1], H and W even with ``pool``; scores (N,).

    """

    name = "magnet-reconstruction"
    paper = "Meng and Chen (2017), MagNet: a two-pronged defense against adversarial examples"
    autoencoder_: DigitsAutoencoder

    def __init__(
        self,
        *,
        p: float = 1.0,
        channels: int = 16,
        pool: bool = True,
        epochs: int = 30,
        noise: float = 0.1,
        lr: float = 1e-2,
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        self.p = check_real(p, "p", minimum=1.0)
        self.channels = check_int(channels, "channels")
        self.pool = check_bool(pool, "pool")
        self.epochs = check_int(epochs, "epochs")
        self.noise = check_real(noise, "noise", minimum=0.0)
        self.lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
        self.batch_size = check_int(batch_size, "batch_size")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The autoencoder (its weights are drawn again in :meth:`fit_parts`)."""
        if len(input_shape) != 3 or input_shape[0] != 1:
            raise InvalidArgumentError(
                f"inputs must be one-channel images shaped (N, 1, H, W), got (N, {input_shape})"
            )
        self.autoencoder_ = DigitsAutoencoder(channels=self.channels, pool=self.pool)

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Train the autoencoder on the clean inputs, seeded from ``generator``."""
        init_seed, train_seed = torch.randint(2**62, (2,), generator=generator).tolist()
        fresh = DigitsAutoencoder(channels=self.channels, pool=self.pool, seed=init_seed)
        self.autoencoder_.load_state_dict(fresh.state_dict())
        train_autoencoder(
            self.autoencoder_,
            x,
            noise=self.noise,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=train_seed,
        )

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """The reconstruction error's ``p``-norm."""
        return reconstruction_error(x, self.autoencoder_(x), self.p)
