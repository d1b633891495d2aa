r"""Are a layer's units special? Szegedy et al.'s experiment, with numbers.

Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow and Fergus (2014), "Intriguing
properties of neural networks", section 3: the inputs that most activate a single unit
``⟨φ(x), e_i⟩`` look no more alike than those that maximise the projection ``⟨φ(x), v⟩``
on a random direction ``v``. Here both are scored on the ``top`` inputs of each unit or
direction by

- **label purity**: the fraction of the top-k that share their most common label;
- **coherence**: the mean pairwise cosine similarity of the top-k inputs after the data
  mean is subtracted (a Pearson correlation of their pixel patterns: 0 for unrelated
  images, 1 for one image repeated). Szegedy et al. judged "the images share a semantic
  property" by eye; this is a measurable stand-in for it that does not use the labels.

Each score comes with the same score of random k-subsets of the data (the floor: what
choosing inputs at random gives) and a seeded percentile-bootstrap interval over the
units or directions; :func:`compare_directions` gives the difference of the means of
units and random directions with its bootstrap interval.

The activation space of a layer is its output flattened, except for a 4-D output
(N, C, H, W), whose channels are averaged over space: a unit is then a channel and a
random direction a unit vector in channel space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._validation import check_choice, check_fraction, check_int, check_seed
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

__all__ = [
    "DirectionComparison",
    "Estimate",
    "UnitAnalysis",
    "compare_directions",
    "find_layer",
    "layer_activations",
    "unit_analysis",
]

_BATCH = 1024


@dataclass(frozen=True)
class Estimate:
    """A mean with a percentile-bootstrap interval at ``level``."""

    mean: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "level": self.level}


@dataclass(frozen=True)
class UnitAnalysis:
    """The top inputs of each unit (or random direction) of a layer, and their scores.

    Attributes:
        layer: the module whose output was read.
        directions: ``"units"`` or ``"random"``.
        vectors: (U, D) the directions in the layer's activation space (rows of the
            identity for ``"units"``).
        top_indices: (U, k) indices into the data of each direction's top-k inputs,
            largest activation or projection first.
        purity: (U,) label purity of each top-k.
        coherence: (U,) mean pairwise centred cosine similarity of each top-k.
        baseline_purity: mean purity of random k-subsets of the data.
        baseline_coherence: mean coherence of random k-subsets of the data.
        purity_estimate: mean purity over the U directions with its bootstrap interval.
        coherence_estimate: the same for coherence.

    """

    layer: str
    directions: str
    vectors: Tensor
    top_indices: Tensor
    purity: Tensor
    coherence: Tensor
    baseline_purity: float
    baseline_coherence: float
    purity_estimate: Estimate
    coherence_estimate: Estimate


@dataclass(frozen=True)
class DirectionComparison:
    """Units minus random directions: differences of mean purity and mean coherence."""

    purity: Estimate
    coherence: Estimate


def _labelled(data: object) -> tuple[Tensor, Tensor]:
    if isinstance(data, ImageData):
        return data.x, data.y
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.ndim < 2 or not x.is_floating_point() or y.shape != (x.shape[0],):
            raise InvalidArgumentError(
                f"data must be (x, y) with x floating (N, ...) and y (N,), got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InvalidTypeError(f"data's labels must be integers, got dtype {y.dtype}")
        return x, y.long()
    raise InvalidTypeError(
        f"data must be an ImageData or an (x, y) pair of tensors, got {type(data).__name__}"
    )


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer``; one error listing every name when there is none."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module (its layers are read with hooks), "
            f"got {type(model).__name__}"
        )
    modules: dict[str, nn.Module] = dict(model.named_modules())
    modules.pop("", None)
    if not isinstance(layer, str) or layer not in modules:
        raise InvalidArgumentError(
            f"layer must name a submodule of the model, got {layer!r}; available: {list(modules)}"
        )
    return modules[layer]


@torch.no_grad()
def layer_activations(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """(N, D) activations of ``layer`` on ``x``: its output flattened, or channel means."""
    module = find_layer(model, layer)
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: object, output: object) -> None:
        if not isinstance(output, Tensor):
            raise ModelError(f"layer {layer!r} returns no tensor")
        seen.append(output.mean((2, 3)) if output.ndim == 4 else output.flatten(1))

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for chunk in x.split(_BATCH):
            before = len(seen)
            model(chunk)
            if len(seen) != before + 1:
                raise ModelError(f"layer {layer!r} must run once per forward pass")
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(seen).double()


def _purity(labels: Tensor) -> Tensor:
    """(U,) fraction of each row of (U, k) labels equal to the row's most common label."""
    counts = torch.zeros(labels.shape[0], int(labels.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))
    return counts.max(1).values / labels.shape[1]


def _coherence(centred: Tensor, indices: Tensor) -> Tensor:
    """(U,) mean pairwise cosine similarity of each top-k (rows of ``centred``)."""
    k = indices.shape[1]
    unit = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
    chosen = unit[indices]  # (U, k, D)
    total = chosen.sum(1).square().sum(1)  # Σ_ij cos_ij, the diagonal included
    diagonal = chosen.square().sum((1, 2))
    coherence: Tensor = (total - diagonal) / (k * (k - 1))
    return coherence


def _resampled_means(values: Tensor, generator: torch.Generator, resamples: int) -> Tensor:
    """(resamples,) means of bootstrap resamples of ``values`` (drawn with replacement)."""
    picks = torch.randint(len(values), (resamples, len(values)), generator=generator)
    return values[picks].mean(1)


def _estimate(mean: float, resampled: Tensor, level: float) -> Estimate:
    tail = (1 - level) / 2
    low, high = torch.quantile(resampled, torch.tensor([tail, 1 - tail], dtype=resampled.dtype))
    return Estimate(mean, float(low), float(high), level)


def unit_analysis(
    model: nn.Module,
    data: ImageData | tuple[Tensor, Tensor],
    *,
    layer: str,
    directions: str = "units",
    top: int = 10,
    count: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
) -> UnitAnalysis:
    """Top-``top`` inputs of every unit, or of random directions, of one layer, scored.

    Args:
        model: an ``nn.Module`` classifier; ``layer`` names one of its submodules.
        data: the inputs searched and their labels: an ImageData or an ``(x, y)`` pair.
        layer: a name from ``model.named_modules()``.
        directions: ``"units"`` (the basis vectors) or ``"random"`` (unit vectors drawn
            uniformly from the sphere of the activation space).
        top: inputs kept per direction, 2 <= top <= N.
        count: random directions drawn; default as many as the layer has units.
        resamples: bootstrap resamples of the directions (and random k-subsets drawn for
            the baseline).
        level: confidence level of the intervals.
        seed: seed of the random directions, the baseline subsets and the bootstrap.

    Returns:
        :class:`UnitAnalysis`.

    """
    x, y = _labelled(data)
    directions = check_choice(directions, "directions", ("units", "random"))
    top = check_int(top, "top", minimum=2)
    if top > x.shape[0]:
        raise InvalidArgumentError(f"top must be at most the {x.shape[0]} inputs, got {top}")
    resamples = check_int(resamples, "resamples")
    level = check_fraction(level, "level")
    generator = make_generator(check_seed(seed))
    activations = layer_activations(model, x, layer)
    width = activations.shape[1]
    if directions == "units":
        if count is not None:
            raise InvalidArgumentError(
                f"count applies to directions='random' only, got count={count!r} with units"
            )
        vectors = torch.eye(width, dtype=torch.float64)
    else:
        draws = width if count is None else check_int(count, "count")
        vectors = torch.randn(draws, width, generator=generator, dtype=torch.float64)
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
    top_indices = (activations @ vectors.T).T.topk(top, dim=1).indices
    labels = y.cpu()
    centred = x.detach().flatten(1).double().cpu()
    centred = centred - centred.mean(0)
    subsets = torch.rand(resamples, x.shape[0], generator=generator).argsort(1)[:, :top]
    purity, coherence = _purity(labels[top_indices]), _coherence(centred, top_indices)
    return UnitAnalysis(
        layer=layer,
        directions=directions,
        vectors=vectors,
        top_indices=top_indices,
        purity=purity,
        coherence=coherence,
        baseline_purity=float(_purity(labels[subsets]).mean()),
        baseline_coherence=float(_coherence(centred, subsets).mean()),
        purity_estimate=_estimate(
            float(purity.mean()), _resampled_means(purity, generator, resamples), level
        ),
        coherence_estimate=_estimate(
            float(coherence.mean()), _resampled_means(coherence, generator, resamples), level
        ),
    )


def compare_directions(
    units: UnitAnalysis,
    random: UnitAnalysis,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int | None = 0,
) -> DirectionComparison:
    """Mean purity and coherence of units minus random directions, with bootstrap intervals.

    The units and the random directions are resampled independently; an interval above
    zero says the units' top inputs are purer (or more alike) than random directions'.
    """
    for name, value in (("units", units), ("random", random)):
        if not isinstance(value, UnitAnalysis):
            raise InvalidTypeError(f"{name} must be a UnitAnalysis, got {type(value).__name__}")
    resamples = check_int(resamples, "resamples")
    level = check_fraction(level, "level")
    generator = make_generator(check_seed(seed))

    def difference(a: Tensor, b: Tensor) -> Estimate:
        resampled = _resampled_means(a, generator, resamples) - _resampled_means(
            b, generator, resamples
        )
        return _estimate(float(a.mean() - b.mean()), resampled, level)

    return DirectionComparison(
        purity=difference(units.purity, random.purity),
        coherence=difference(units.coherence, random.coherence),
    )
