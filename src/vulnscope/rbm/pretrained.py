"""Deep RBM classifiers of the binarised digits, trained once and cached."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

from vulnscope._cache import cache_dir, recipe_digest
from vulnscope._threads import fixed_threads
from vulnscope._validation import check_choice, check_int, check_seed
from vulnscope.data.dataset import ImageData
from vulnscope.errors import DataError, VulnscopeWarning
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.serialization import load_deep_rbm, save_deep_rbm
from vulnscope.rbm.training import fine_tune, greedy_pretrain

__all__ = ["DeepRBMRecipe", "binarized_digits", "pretrained_deep_rbm"]

logger = logging.getLogger(__name__)

BINARIZE_THRESHOLD = 0.5
"""Pixels above this intensity are on: the RBM network sees binary inputs."""


@dataclass(frozen=True)
class DeepRBMRecipe:
    """How a cached deep RBM is trained; every field is part of its cache key."""

    pretrain_epochs: int = 50
    pretrain_lr: float = 0.1
    fine_tune: str = "straight_through"
    fine_tune_epochs: int = 60
    fine_tune_lr: float = 1e-2
    revision: int = 2
    """Raised when the code that trains the network changes its weights (2: trained on one
    intra-op thread, :func:`vulnscope._threads.fixed_threads`), so that stale cached
    weights are not reused."""

    def key(self, depth: int, width: int, seed: int) -> str:
        """File stem of the cached weights: readable, plus a hash of the recipe."""
        return f"digits-deeprbm-depth{depth}-width{width}-seed{seed}-{recipe_digest(self)}"


def binarized_digits(split: Literal["train", "test", "all"] = "test") -> ImageData:
    """The embedded digits with every pixel set to 0 or 1 at :data:`BINARIZE_THRESHOLD`."""
    from vulnscope.data.digits import load_digits

    data = load_digits(split)
    images = (data.x > BINARIZE_THRESHOLD).to(data.x.dtype)
    return ImageData(images, data.y, data.num_classes, f"{data.source}:binary")


def pretrained_deep_rbm(
    *,
    depth: int = 4,
    width: int = 64,
    seed: int = 0,
    fine_tune_method: Literal["straight_through", "mean_field", "none"] = "straight_through",
    use_cache: bool = True,
) -> DeepRBM:
    """A deep RBM classifier of the binarised digits, from the cache if present.

    ``depth`` RBMs (``depth - 1`` hidden layers of ``width`` units, then the labels),
    greedy CD pretraining, then fine-tuning of the classification pass.

    Args:
        depth: number of RBMs, N >= 2 (at least one hidden layer).
        width: units per hidden layer.
        seed: seed of the weights, minibatches and chains.
        fine_tune_method: ``"straight_through"`` (the sampled pass), ``"mean_field"``,
            or ``"none"`` (the greedy stack with its linear read-out).
        use_cache: read and write the cache in :func:`vulnscope.models.cache_dir`.

    """
    depth = check_int(depth, "depth", minimum=2)
    width = check_int(width, "width")
    seed = check_seed(seed) or 0
    method = check_choice(
        fine_tune_method, "fine_tune_method", ("straight_through", "mean_field", "none")
    )
    recipe = DeepRBMRecipe(fine_tune=method)
    path = cache_dir() / f"{recipe.key(depth, width, seed)}.safetensors"
    if use_cache and path.is_file():
        try:
            return load_deep_rbm(path)
        except DataError as error:
            warnings.warn(f"{error}; retraining", VulnscopeWarning, stacklevel=2)
    train = binarized_digits("train")
    network = DeepRBM([train.x[0].numel()] + [width] * (depth - 1), train.num_classes, seed=seed)
    logger.info("training a deep RBM (depth %d, width %d, seed %d)", depth, width, seed)
    with fixed_threads():  # the same weights at any thread count, on any machine
        greedy_pretrain(
            network,
            train.x,
            train.y,
            epochs=recipe.pretrain_epochs,
            lr=recipe.pretrain_lr,
            seed=seed,
        )
        if method != "none":
            fine_tune(
                network,
                train.x,
                train.y,
                method=method,  # type: ignore[arg-type]
                epochs=recipe.fine_tune_epochs,
                lr=recipe.fine_tune_lr,
                seed=seed,
            )
    network.eval()
    if use_cache:
        save_deep_rbm(
            network, path, metadata={"recipe": json.dumps(asdict(recipe)), "seed": str(seed)}
        )
    return network
