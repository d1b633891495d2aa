"""Trained reference models, cached as safetensors so that the second run is instant."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor, nn

from vulnscope._cache import CACHE_ENV, cache_dir, recipe_digest
from vulnscope._io import write_bytes_atomic
from vulnscope._threads import fixed_threads
from vulnscope._validation import check_choice, check_seed
from vulnscope.errors import VulnscopeWarning
from vulnscope.models.digits import DigitsCNN, DigitsMLP
from vulnscope.models.seeded import build_seeded
from vulnscope.models.training import train_classifier

__all__ = [
    "CACHE_ENV",
    "PRETRAINED",
    "Recipe",
    "cache_dir",
    "pretrained",
    "recipe_digest",
    "train_recipe",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How a reference model is built and trained; its hash is part of the cache key."""

    architecture: str
    data: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    revision: int = 1
    """Raised when the code that builds or trains the model changes its numbers (CNN 2:
    its feature maps run channels-last; CNN 3, MLP 2: trained on one intra-op thread,
    :func:`vulnscope._threads.fixed_threads`), so that stale cached weights are not reused."""

    def key(self, seed: int) -> str:
        """File stem of the cached weights: readable, plus a hash of every field."""
        return f"{self.data}-{self.architecture}-seed{seed}-{recipe_digest(self)}"


PRETRAINED: dict[str, tuple[Callable[[], nn.Module], Recipe]] = {
    "digits-cnn": (
        DigitsCNN,
        Recipe("cnn", "digits", epochs=30, batch_size=64, lr=2e-3, weight_decay=0.0, revision=3),
    ),
    "digits-mlp": (
        DigitsMLP,
        Recipe("mlp", "digits", epochs=40, batch_size=64, lr=2e-3, weight_decay=0.0, revision=2),
    ),
}
"""Names of the reference models, each with its architecture and training recipe."""


def train_recipe(
    factory: Callable[[], nn.Module], recipe: Recipe, x: Tensor, y: Tensor, *, seed: int
) -> nn.Module:
    """A fresh model from ``factory``, built under ``seed``, trained on ``(x, y)`` by ``recipe``.

    How :func:`pretrained` trains its reference models; other experiments (e.g. networks
    trained on parts of the data) call it to train theirs exactly alike. Training runs
    on one intra-op thread (:func:`vulnscope._threads.fixed_threads`), so the weights are
    the same at any ``torch.set_num_threads`` and on any number of cores.
    """
    model = build_seeded(factory, seed)
    with fixed_threads():
        return train_classifier(
            model,
            x,
            y,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            weight_decay=recipe.weight_decay,
            seed=seed,
        )


def _train(name: str, seed: int) -> nn.Module:
    from vulnscope.data.digits import load_digits  # the data package imports scikit-learn

    factory, recipe = PRETRAINED[name]
    train = load_digits("train")
    logger.info("training %s (seed %d) on %d images", name, seed, len(train))
    return train_recipe(factory, recipe, train.x, train.y, seed=seed)


def pretrained(name: str = "digits-cnn", *, seed: int = 0, use_cache: bool = True) -> nn.Module:
    """A reference model trained on the digits training split, from the cache if present.

    The weights live in :func:`cache_dir` as ``<data>-<arch>-seed<seed>-<recipe hash>
    .safetensors``: changing the recipe changes the file. A damaged cache file is
    replaced with a warning. Writes are atomic, so concurrent runs are safe.

    Args:
        name: one of :data:`PRETRAINED`: ``"digits-cnn"`` or ``"digits-mlp"``.
        seed: seed of the initialisation and of the minibatch order.
        use_cache: read and write the cache (False always trains).

    Returns:
        The trained model, in eval mode, on the CPU.

    """
    name = check_choice(name, "name", tuple(PRETRAINED))
    seed = check_seed(seed) or 0
    factory, recipe = PRETRAINED[name]
    path = cache_dir() / f"{recipe.key(seed)}.safetensors"
    if use_cache and path.is_file():
        model = factory()
        try:
            model.load_state_dict(load(path.read_bytes()))
            return model.eval()
        except (SafetensorError, RuntimeError, OSError) as error:
            warnings.warn(
                f"cached weights {path} are unreadable ({error}); retraining",
                VulnscopeWarning,
                stacklevel=2,
            )
    model = _train(name, seed)
    if use_cache:
        metadata = {"name": name, "seed": str(seed), "recipe": json.dumps(asdict(recipe))}
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        write_bytes_atomic(path, save(state, metadata=metadata))
    return model
