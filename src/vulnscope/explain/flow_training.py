"""Training the RealNVP flow by maximum likelihood, and the digits flow trained once and cached.

The flow itself is :class:`vulnscope.explain.flow.AffineCouplingFlow`; its weights are
cached like the reference classifiers (:func:`vulnscope.models.pretrained`): a safetensors
file in :func:`vulnscope.models.cache_dir` named by a hash of the recipe.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from vulnscope._cache import cache_dir, recipe_digest
from vulnscope._threads import fixed_threads
from vulnscope._validation import check_batch, check_int, check_real, check_seed
from vulnscope.data.dataset import ImageData
from vulnscope.errors import DataError, InvalidArgumentError, InvalidTypeError, VulnscopeWarning
from vulnscope.explain.flow import AffineCouplingFlow, load_flow, save_flow
from vulnscope.models.seeded import build_seeded

__all__ = ["FlowRecipe", "cached_flow", "pretrained_flow", "train_flow"]

logger = logging.getLogger(__name__)


def _images(data: object) -> Tensor:
    if isinstance(data, ImageData):
        return data.x
    if isinstance(data, tuple) and len(data) == 2:
        data = data[0]
    if not isinstance(data, Tensor):
        raise InvalidTypeError(
            f"data must be an ImageData, an (x, y) pair or a tensor of images, got "
            f"{type(data).__name__}"
        )
    x = check_batch(data, "data")
    if x.ndim != 4 or float(x.min()) < 0 or float(x.max()) > 1:
        raise InvalidArgumentError(
            f"data must hold images (N, C, H, W) in [0, 1], got shape {tuple(x.shape)} "
            f"with values in [{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )
    return x


def train_flow(
    data: ImageData | tuple[Tensor, Tensor] | Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 100,
    lr: float = 1e-3,
    couplings: int = 8,
    hidden: int = 128,
    levels: int = 17,
    seed: int = 0,
) -> AffineCouplingFlow:
    """Fit an :class:`AffineCouplingFlow` to images by maximum likelihood (Adam).

    Each minibatch is dequantised with uniform noise of one grey level, ``(u - 1/2) /
    (levels - 1)``, so that the flow fits a density, not spikes at the grey levels.
    Training runs on one intra-op thread (:func:`vulnscope._threads.fixed_threads`): the
    same weights on any machine, and faster for so small a network (0.2 s against 3.9 s
    on two busy cores for the tests' flow).

    Args:
        data: images (N, C, H, W) in [0, 1]: an ImageData, an (x, y) pair or a tensor.
        epochs: passes over the data.
        batch_size: images per step.
        lr: Adam's learning rate.
        couplings: coupling blocks of the flow.
        hidden: width of the couplings' MLPs.
        levels: grey levels of the data (the digits have 17).
        seed: seed of the weights, the minibatch order and the dequantisation noise.

    Returns:
        The trained flow in eval mode, on the images' device.

    """
    x = _images(data)
    epochs, batch_size = check_int(epochs, "epochs"), check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    step = 1.0 / (check_int(levels, "levels", minimum=2) - 1)
    seed = check_seed(seed) or 0
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    flow = cast(
        AffineCouplingFlow,
        build_seeded(lambda: AffineCouplingFlow(shape, couplings=couplings, hidden=hidden), seed),
    ).to(x.device)
    generator = torch.Generator().manual_seed(seed)

    def dequantised(batch: Tensor) -> Tensor:
        noise = (torch.rand(len(batch), *shape, generator=generator) - 0.5) * step
        return x[batch] + noise.to(x.device)

    flow.initialize(dequantised(torch.randperm(x.shape[0], generator=generator)[:512]))
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    flow.train()
    with fixed_threads():
        _fit(flow, optimizer, x.shape[0], epochs, batch_size, dequantised, generator)
    return flow.eval()


def _fit(
    flow: AffineCouplingFlow,
    optimizer: torch.optim.Optimizer,
    n: int,
    epochs: int,
    batch_size: int,
    dequantised: Callable[[Tensor], Tensor],
    generator: torch.Generator,
) -> None:
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for batch in order.split(batch_size):
            loss = -flow.log_prob(dequantised(batch)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        logger.debug("flow epoch %d: %.4f nats per image", epoch, total / n)


@dataclass(frozen=True)
class FlowRecipe:
    """How the cached digits flow is trained; every field is part of its cache key."""

    epochs: int = 50
    batch_size: int = 100
    lr: float = 1e-3
    couplings: int = 8
    hidden: int = 128
    revision: int = 1
    """Raised when the code that builds or trains the flow changes its weights."""

    def key(self, seed: int) -> str:
        """File stem of the cached weights: readable, plus a hash of the recipe."""
        return f"digits-flow-seed{seed}-{recipe_digest(self)}"


def pretrained_flow(*, seed: int = 0, use_cache: bool = True) -> AffineCouplingFlow:
    """The flow of the digits training split (:class:`FlowRecipe`), from the cache if present.

    Cached beside the reference classifiers (:func:`vulnscope.models.cache_dir`) under a
    hash of the recipe (:func:`vulnscope.models.recipe_digest`).
    """
    seed = check_seed(seed) or 0
    recipe = FlowRecipe()
    path = _cached_path(seed)
    if use_cache and path.is_file():
        try:
            return load_flow(path)
        except DataError as error:
            warnings.warn(f"{error}; retraining", VulnscopeWarning, stacklevel=2)
    from vulnscope.data.digits import load_digits

    logger.info("training the digits flow (seed %d)", seed)
    flow = train_flow(
        load_digits("train"),
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        couplings=recipe.couplings,
        hidden=recipe.hidden,
        seed=seed,
    )
    if use_cache:
        save_flow(flow, path, metadata={"recipe": json.dumps(asdict(recipe)), "seed": str(seed)})
    return flow


def _cached_path(seed: int) -> Path:
    return cache_dir() / f"{FlowRecipe().key(seed)}.safetensors"


def cached_flow(*, seed: int = 0) -> AffineCouplingFlow | None:
    """The digits flow if the cache holds it (see :func:`pretrained_flow`), else ``None``.

    For callers that should not spend the training (about 10–20 s on one thread) on a
    quick look.
    """
    path = _cached_path(check_seed(seed) or 0)
    if not path.is_file():
        return None
    try:
        return load_flow(path)
    except DataError:
        return None
