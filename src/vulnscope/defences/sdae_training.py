"""Training stacked denoising autoencoders (Vincent et al. 2010), and their classifier.

One layer at a time, then the whole stack, then the classifier fine-tuned from the encoder.

:func:`fit_sdae` trains each layer as a denoising autoencoder of the (clean) code below it,
only that layer's weights moving, then fine-tunes the stack without labels;
:func:`sdae_classifier` puts a softmax layer on a copy of the encoder and fine-tunes it on
labels, the paper's supervised fine-tuning.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_choice,
    check_inputs,
    check_int,
    check_real,
    check_seed,
    describe,
)
from vulnscope.defences.sdae import (
    _BOUNDS,
    CORRUPTIONS,
    StackedDenoisingAutoencoder,
    denoising_loss,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.training import train_classifier

__all__ = ["fit_sdae", "sdae_classifier", "train_sdae"]

logger = logging.getLogger(__name__)


def _descend(
    sdae: StackedDenoisingAutoencoder,
    x: Tensor,
    parameters: list[nn.Parameter],
    *,
    layer: int | None,
    corruption: str,
    level: float,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator, device=x.device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            batch = x[order[start : start + batch_size]]
            loss = denoising_loss(
                sdae, batch, layer=layer, corruption=corruption, level=level, generator=generator
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
        logger.debug(
            "layer %s epoch %d/%d: loss %.4f", layer, epoch + 1, epochs, total / x.shape[0]
        )


def fit_sdae(
    sdae: StackedDenoisingAutoencoder,
    data: Tensor,
    *,
    corruption: str = "masking",
    level: float = 0.25,
    epochs: int = 20,
    finetune_epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
) -> StackedDenoisingAutoencoder:
    """Train ``sdae`` in place: layer-wise greedy pre-training, then whole-stack fine-tuning.

    Each layer in turn, bottom up, trains as a denoising autoencoder on the clean codes
    of the layers below for ``epochs`` epochs (only its own encoder and decoder move);
    then the whole stack reconstructs the clean data from its corruption for
    ``finetune_epochs`` epochs (see the module docstring). Adam with learning rate ``lr``
    (the paper uses plain SGD; Adam at 1e-2 gets a usable stack in a few epochs on
    the digits). The
    minibatch order and the corruption come from one generator seeded with ``seed``.

    Args:
        sdae: the stack, ``sizes[0]`` = the data's features.
        data: (N, ...) clean training inputs in [0, 1].
        corruption: ``"masking"`` or ``"gaussian"`` (:func:`corrupt`).
        level: ν or σ; 0 trains ordinary (basic) autoencoders.
        epochs: epochs of each layer's pre-training.
        finetune_epochs: epochs of fine-tuning the whole stack (0 skips it).
        batch_size: samples per step.
        lr: Adam's learning rate.
        seed: seed of the minibatch order and of the corruption.

    Returns:
        ``sdae``, trained and in eval mode.

    """
    if not isinstance(sdae, StackedDenoisingAutoencoder):
        raise InvalidTypeError(f"sdae must be a StackedDenoisingAutoencoder, got {describe(sdae)}")
    x = check_inputs(data, bounds=_BOUNDS, name="data")
    if x[0].numel() != sdae.sizes[0]:
        raise InvalidArgumentError(
            f"data must have sizes[0] = {sdae.sizes[0]} features per sample, got "
            f"{x[0].numel()} (shape {tuple(x.shape)})"
        )
    corruption = check_choice(corruption, "corruption", CORRUPTIONS)
    level = check_real(level, "level", minimum=0.0)
    epochs = check_int(epochs, "epochs", minimum=0)
    finetune_epochs = check_int(finetune_epochs, "finetune_epochs", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    generator = torch.Generator(device=x.device).manual_seed(check_seed(seed) or 0)
    settings: dict[str, Any] = {
        "corruption": corruption,
        "level": level,
        "batch_size": batch_size,
        "lr": lr,
        "generator": generator,
    }
    sdae.train()
    for k in range(sdae.layers):
        own = [*sdae.encoder[k].parameters(), *sdae.decoder[sdae.layers - 1 - k].parameters()]
        _descend(sdae, x, own, layer=k, epochs=epochs, **settings)
    _descend(sdae, x, list(sdae.parameters()), layer=None, epochs=finetune_epochs, **settings)
    return sdae.eval()


def train_sdae(
    data: Tensor,
    *,
    sizes: Sequence[int] = (64, 128, 64),
    activation: str = "sigmoid",
    corruption: str = "masking",
    level: float = 0.25,
    epochs: int = 20,
    finetune_epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-2,
    seed: int = 0,
) -> StackedDenoisingAutoencoder:
    """A new :class:`StackedDenoisingAutoencoder` seeded with ``seed``, trained by :func:`fit_sdae`.

    The arguments are those of the stack (``sizes``, ``activation``) and of
    :func:`fit_sdae`.

    Example:
        >>> from vulnscope.data import load_digits
        >>> train = load_digits("train")
        >>> sdae = train_sdae(train.x[:200], sizes=(64, 32), epochs=1, finetune_epochs=1)
        >>> tuple(sdae(train.x[:2]).shape)
        (2, 1, 8, 8)

    """
    sdae = StackedDenoisingAutoencoder(sizes=sizes, activation=activation, seed=seed)
    return fit_sdae(
        sdae,
        data,
        corruption=corruption,
        level=level,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )


def sdae_classifier(
    sdae: StackedDenoisingAutoencoder,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int = 10,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Sequential:
    """A classifier initialised from the stack's encoder, fine-tuned on labels.

    Vincent et al. (2010), section 3: the pre-trained encoders, topped by a softmax
    (logistic regression) layer, fine-tuned together by gradient descent on the
    supervised cross-entropy (:func:`vulnscope.models.train_classifier`). The stack itself
    is copied, not changed.

    Args:
        sdae: a trained stack (or an untrained one: training from scratch).
        x: (N, ...) training inputs in [0, 1], ``sizes[0]`` features each.
        y: (N,) labels in 0 .. ``num_classes`` - 1.
        num_classes: outputs of the softmax layer.
        epochs: epochs of the fine-tuning.
        batch_size: samples per step.
        lr: Adam's learning rate.
        seed: seed of the softmax layer's weights and of the minibatch order.

    Returns:
        ``nn.Sequential(Flatten, encoder, Linear)``, (N, ...) -> (N, num_classes) logits, in
        eval mode.

    """
    if not isinstance(sdae, StackedDenoisingAutoencoder):
        raise InvalidTypeError(f"sdae must be a StackedDenoisingAutoencoder, got {describe(sdae)}")
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    head = nn.Linear(sdae.sizes[-1], num_classes)
    generator = torch.Generator().manual_seed(check_seed(seed) or 0)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(head.in_features)
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    model = nn.Sequential(nn.Flatten(), copy.deepcopy(sdae.encoder), head)
    trained = train_classifier(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return cast(nn.Sequential, trained)  # train_classifier returns its argument
