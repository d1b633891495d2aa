r"""Stacked denoising autoencoders: layer-wise greedy training, fine-tuning, uses.

Vincent, Larochelle, Lajoie, Bengio and Manzagol (2010), "Stacked denoising
autoencoders: learning useful representations in a deep network with a local denoising
criterion" (JMLR 11). A *denoising autoencoder* maps a corrupted input
:math:`\tilde x \sim q_\mathcal{D}(\tilde x \mid x)` through an encoder
:math:`h = s(W \tilde x + b)` and a decoder :math:`z = s'(W' h + b')` and is trained to
reconstruct the *clean* ``x``; the paper's two losses (section 2.4) are the
cross-entropy for inputs in [0, 1],

.. math:: L_\mathbb{H}(x, z) = -\sum_k \big[x_k \log z_k + (1 - x_k) \log(1 - z_k)\big],

and the squared error :math:`L_2(x, z) = \sum_k (x_k - z_k)^2` otherwise; its two
corruptions (section 4.2) are *masking noise* (each input set to 0 with probability
``ν``) and *additive Gaussian noise* :math:`\tilde x = x + \mathcal{N}(0, \sigma^2 I)`.

A stack is trained greedily (section 3): the first denoising autoencoder on the data, the
k-th on the clean codes of the k - 1 layers below (corruption only ever enters the layer
being trained). The stack is then fine-tuned as a whole: here without labels, reconstructing
the clean input from its corruption through every layer (the deep autoencoder of Hinton and
Salakhutdinov 2006, what a reformer and a reconstruction-error detector need), or with
labels by :func:`~vulnscope.defences.sdae_training.sdae_classifier` (the encoder under a
softmax layer, the paper's supervised fine-tuning). The decoders are untied
(:math:`W' \ne W^\top`), the paper's general form.

Uses: :class:`Reformer` puts the stack in front of a classifier (MagNet's reformer,
scriptable), and :class:`vulnscope.detect.sdae.SDAEDetector` flags inputs it reconstructs
badly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import (
    check_choice,
    check_int,
    check_real,
    check_seed,
    describe,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "ACTIVATIONS",
    "CORRUPTIONS",
    "Reformer",
    "StackedDenoisingAutoencoder",
    "corrupt",
    "denoising_loss",
    "reconstruction_loss",
]

logger = logging.getLogger(__name__)

ACTIVATIONS: tuple[str, ...] = ("sigmoid", "relu")
"""The encoders' nonlinearities."""

CORRUPTIONS: tuple[str, ...] = ("masking", "gaussian")
"""The corruptions of Vincent et al. (2010), section 4.2."""

_BOUNDS = (0.0, 1.0)


def corrupt(
    x: Tensor, *, kind: str = "masking", level: float, generator: torch.Generator
) -> Tensor:
    r"""A corrupted copy :math:`\tilde x` of ``x`` (Vincent et al. 2010, section 4.2).

    Args:
        x: (N, ...) inputs.
        kind: ``"masking"``: each entry set to 0 independently with probability
            ``level`` (ν); ``"gaussian"``: :math:`x + \mathcal{N}(0, \text{level}^2)` per
            entry (σ = ``level``), not clipped.
        level: ν in [0, 1] for masking, σ >= 0 for Gaussian noise; 0 returns ``x``.
        generator: the source of the noise (on ``x``'s device).

    Returns:
        (N, ...) the corrupted inputs, same dtype.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.ones(1, 1000)
        >>> kept = corrupt(x, kind="masking", level=0.3, generator=g).mean()
        >>> 0.65 < float(kept) < 0.75
        True

    """
    kind = check_choice(kind, "kind", CORRUPTIONS)
    level = check_real(level, "level", minimum=0.0)
    if kind == "masking":
        if level > 1.0:
            raise InvalidArgumentError(f"level (the masking probability) must be <= 1, got {level}")
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= level
        return x * keep.to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + level * noise


def reconstruction_loss(reconstruction: Tensor, target: Tensor, *, loss: str) -> Tensor:
    r"""Per-sample reconstruction loss of Vincent et al. (2010), section 2.4.

    Args:
        reconstruction: (N, D) the decoder's output ``z`` (in (0, 1) for the cross-entropy).
        target: (N, D) the clean ``x`` (in [0, 1] for the cross-entropy).
        loss: ``"cross-entropy"``: :math:`-\sum_k [x_k \log z_k + (1-x_k)\log(1-z_k)]`
            (each log clamped at -100, as :func:`torch.nn.functional.binary_cross_entropy`);
            ``"squared"``: :math:`\sum_k (x_k - z_k)^2`.

    Returns:
        (N,) the loss of each sample, summed over its dimensions.

    """
    loss = check_choice(loss, "loss", ("cross-entropy", "squared"))
    if loss == "squared":
        return (reconstruction - target).square().flatten(1).sum(1)
    per_entry = F.binary_cross_entropy(reconstruction, target, reduction="none")
    return per_entry.flatten(1).sum(1)


class StackedDenoisingAutoencoder(nn.Module):
    """A stack of dense denoising autoencoders (Vincent et al. 2010).

    Layer ``k`` encodes ``sizes[k]`` features into ``sizes[k + 1]`` with
    ``encoder[k] = activation(Linear)`` and decodes them back with
    ``decoder[L - 1 - k]`` (the decoders are stored in the order they run). The bottom
    decoder ends in a sigmoid, so reconstructions of [0, 1] data lie in (0, 1); the
    others end in the encoders' activation when it is the sigmoid (codes in (0, 1),
    reconstructed under the cross-entropy) and are linear for ReLU (codes in [0, ∞),
    squared error). Weights are drawn from ``torch.Generator().manual_seed(seed)`` with
    PyTorch's default distribution for ``Linear`` (uniform on ±1/√fan_in), without
    touching the global random state. TorchScript-scriptable.

    Args:
        sizes: the input's features then each code's, e.g. ``(64, 128, 64)`` for 8x8
            digits (two layers); at least two entries.
        activation: ``"sigmoid"`` (the paper's) or ``"relu"``.
        seed: seed of the initial weights.

    Shape:
        input (N, ...) with ``sizes[0]`` features in all; ``forward`` returns the
        reconstruction, same shape; ``encode`` (N, sizes[-1]).

    Example:
        >>> import torch
        >>> sdae = StackedDenoisingAutoencoder(sizes=(64, 32, 16))
        >>> tuple(sdae(torch.rand(3, 1, 8, 8)).shape), tuple(sdae.encode(torch.rand(3, 64)).shape)
        ((3, 1, 8, 8), (3, 16))

    """

    def __init__(
        self, *, sizes: Sequence[int] = (64, 128, 64), activation: str = "sigmoid", seed: int = 0
    ) -> None:
        super().__init__()
        if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise InvalidArgumentError(
                f"sizes must be a sequence of at least two layer widths, got {describe(sizes)}"
            )
        self.sizes = tuple(check_int(size, f"sizes[{i}]") for i, size in enumerate(sizes))
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        seed = check_seed(seed) or 0
        act: type[nn.Module] = nn.Sigmoid if self.activation == "sigmoid" else nn.ReLU
        layers = len(self.sizes) - 1
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(nn.Linear(a, b), act())
                for a, b in zip(self.sizes, self.sizes[1:], strict=False)
            )
        )
        decoders = []
        for k in reversed(range(layers)):
            out: nn.Module = (
                nn.Sigmoid() if k == 0 or self.activation == "sigmoid" else nn.Identity()
            )
            decoders.append(nn.Sequential(nn.Linear(self.sizes[k + 1], self.sizes[k]), out))
        self.decoder = nn.Sequential(*decoders)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    bound = 1.0 / math.sqrt(module.in_features)
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.uniform_(-bound, bound, generator=generator)

    @property
    def layers(self) -> int:
        """The number of stacked autoencoders."""
        return len(self.sizes) - 1

    def layer_loss(self, k: int) -> str:
        """The reconstruction loss of layer ``k``: cross-entropy for [0, 1] inputs, else squared."""
        return "cross-entropy" if k == 0 or self.activation == "sigmoid" else "squared"

    def encode(self, x: Tensor) -> Tensor:
        """The top code (N, sizes[-1]) of ``x`` (N, ...), flattened first."""
        code: Tensor = self.encoder(x.flatten(1))
        return code

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x`` through every layer, shaped as ``x``."""
        reconstruction: Tensor = self.decoder(self.encoder(x.flatten(1)))
        return reconstruction.view(x.shape)


def denoising_loss(
    sdae: StackedDenoisingAutoencoder,
    x: Tensor,
    *,
    layer: int | None = None,
    corruption: str = "masking",
    level: float = 0.25,
    generator: torch.Generator,
) -> Tensor:
    """The mean denoising loss of one layer (``layer``) or of the whole stack (``None``).

    Layer ``k``'s input is the clean code of ``x`` through the ``k`` layers below; it is
    corrupted, encoded, decoded and compared with its clean self under
    :meth:`StackedDenoisingAutoencoder.layer_loss`. The whole stack reconstructs ``x``
    from its corruption through every layer (cross-entropy).

    Args:
        sdae: the stack.
        x: (N, ...) clean inputs in [0, 1].
        layer: 0 .. ``sdae.layers - 1``, or ``None`` for the whole stack.
        corruption: ``"masking"`` or ``"gaussian"`` (:func:`corrupt`).
        level: the corruption's ν or σ.
        generator: the source of the corruption.

    Returns:
        A 0-dim tensor (differentiable in the stack's parameters): the per-sample loss
        averaged over the batch.

    """
    flat = x.flatten(1)
    if layer is None:
        noisy = corrupt(flat, kind=corruption, level=level, generator=generator)
        return reconstruction_loss(
            sdae.decoder(sdae.encoder(noisy)), flat, loss="cross-entropy"
        ).mean()
    if not 0 <= layer < sdae.layers:
        raise InvalidArgumentError(f"layer must be in 0..{sdae.layers - 1} or None, got {layer}")
    with torch.no_grad():
        clean = sdae.encoder[:layer](flat) if layer else flat
    noisy = corrupt(clean, kind=corruption, level=level, generator=generator)
    code = sdae.encoder[layer](noisy)
    reconstruction = sdae.decoder[sdae.layers - 1 - layer](code)
    return reconstruction_loss(reconstruction, clean, loss=sdae.layer_loss(layer)).mean()


class Reformer(nn.Module):
    """A classifier behind an autoencoder: ``classifier(autoencoder(x))``.

    Meng and Chen's (2017) reformer: inputs are pulled towards the data the autoencoder
    was trained on before the classifier sees them; with a stacked denoising autoencoder,
    the use Vincent et al. (2010) train for (removing corruption). TorchScript-scriptable
    when both parts are, so ``torch.jit.script`` can save it as a model file.

    Args:
        classifier: (N, ...) in [0, 1] -> (N, C) logits.
        autoencoder: (N, ...) -> reconstructions of the same shape.

    Shape:
        input (N, ...) in [0, 1]; output (N, C) logits.

    """

    def __init__(self, classifier: nn.Module, autoencoder: nn.Module) -> None:
        super().__init__()
        for name, module in (("classifier", classifier), ("autoencoder", autoencoder)):
            if not isinstance(module, nn.Module):
                raise InvalidTypeError(f"{name} must be a torch.nn.Module, got {describe(module)}")
        self.classifier = classifier
        self.autoencoder = autoencoder

    def forward(self, x: Tensor) -> Tensor:
        """The classifier's logits (N, C) on the reconstruction of ``x``."""
        logits: Tensor = self.classifier(self.autoencoder(x))
        return logits
