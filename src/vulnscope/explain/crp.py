"""Concept relevance propagation (CRP) and the concept atlas.

Achtibat et al. 2023, "From attribution maps to human-understandable explanations through
Concept Relevance Propagation".

A layer's channels are its *concepts*. CRP explains a logit through chosen concepts only:
the relevance arriving at the layer is kept on those channels and set to zero on the others
before it goes further back, so the input heatmap shows where the chosen concepts sit.
The concept atlas ranks inputs per concept by its relevance (RelMax) and by its activation
(ActMax), the two ways the paper finds reference examples of a concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._validation import check_int, check_tensor, describe
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.explain.lrp import Composite, _propagate, _settings
from vulnscope.explain.network import check_layer, read_network

__all__ = ["ConceptAtlas", "concept_atlas", "concept_relevance", "crp"]


def _concept_mask(concepts: Any, n: int, channels: int, device: torch.device) -> Tensor:
    """(N, C) 0/1 weights from shared indices (k,) or per-input indices (N, k)."""
    if isinstance(concepts, Sequence) and not isinstance(concepts, str):
        concepts = torch.as_tensor(list(concepts), dtype=torch.int64)
    check_tensor(concepts, "concepts", of=" of channel indices")
    if concepts.is_floating_point() or concepts.ndim not in (1, 2) or concepts.numel() == 0:
        raise InvalidArgumentError(
            f"concepts must be channel indices, shape (k,) for every input or (N, k) per "
            f"input, got {describe(concepts)}"
        )
    if concepts.ndim == 2 and concepts.shape[0] != n:
        raise InvalidArgumentError(
            f"concepts of shape (N, k) must have N = {n} rows, got {tuple(concepts.shape)}"
        )
    if int(concepts.min()) < 0 or int(concepts.max()) >= channels:
        raise InvalidArgumentError(
            f"concepts must be channels in [0, {channels - 1}] (the layer has {channels}), "
            f"got values in [{int(concepts.min())}, {int(concepts.max())}]"
        )
    index = concepts.to(device=device, dtype=torch.int64).expand(n, -1)
    return torch.zeros(n, channels, device=device).scatter_(1, index, 1.0)


def _channels(model: nn.Module, inputs: Tensor, step: int) -> int:
    """Channels (dim 1) of step ``step``'s output."""
    network = read_network(model)
    with torch.no_grad():
        current = network.normalize(inputs[:1].detach())
        for layer in network.steps[: step + 1]:
            current = layer(current)
    return int(current.shape[1])


def crp(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    *,
    layer: str,
    concepts: Sequence[int] | Tensor,
    rules: str | Composite | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Input relevance of ``target``'s logit conditioned on ``concepts`` at ``layer``.

    The relevance reaching ``layer``'s output is kept on the channels ``concepts`` and
    zeroed elsewhere, then propagated to the input by the rules of :func:`~vulnscope.
    explain.lrp.lrp`. With every channel it is plain LRP; over a partition of the channels
    the heatmaps sum to it.

    Args:
        model: as for ``lrp``.
        inputs: (N, ...) inputs inside ``bounds``.
        target: the class explained, (N,) or one int.
        layer: dotted name of the layer whose output channels are the concepts.
        concepts: channel indices, (k,) shared by every input or (N, k) per input.
        rules: as for ``lrp``.
        epsilon: the ε of LRP-ε.
        gamma: the γ of LRP-γ.
        bounds: the input box.

    Returns:
        (N, ...) relevance shaped like ``inputs``.

    Raises:
        InvalidArgumentError: ``layer`` names no layer (the message lists them), or a
            concept is out of range.

    """
    settings = _settings(rules, epsilon, gamma, bounds)
    step = check_layer(read_network(model), layer)
    x = check_tensor(inputs, "inputs")
    mask = _concept_mask(concepts, x.shape[0], _channels(model, x, step), x.device)
    return _propagate(model, x, target, settings, mask=(step, mask)).relevance


def concept_relevance(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor | int,
    *,
    layer: str,
    rules: str | Composite | None = None,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Relevance of each concept (channel) of ``layer`` for ``target``'s logit.

    The LRP relevance at ``layer``'s output summed over each channel's positions: the
    concept's share of the explained logit (Achtibat et al. 2023, eq. 7).

    Returns:
        (N, C) relevance per input and channel.

    """
    settings = _settings(rules, epsilon, gamma, bounds)
    step = check_layer(read_network(model), layer)
    kept = _propagate(model, inputs, target, settings, keep=(step,)).kept[0]
    return kept.flatten(2).sum(2) if kept.ndim > 2 else kept


@dataclass(frozen=True)
class ConceptAtlas:
    """Reference inputs of each concept of a layer.

    Attributes:
        layer: the layer's dotted name.
        relevance: (N, C) relevance of each concept for the explained class per input.
        activation: (N, C) largest activation of each concept over its positions.
        relevance_top: (C, k) indices of the inputs with the largest relevance (RelMax).
        activation_top: (C, k) indices of the inputs with the largest activation (ActMax).

    """

    layer: str
    relevance: Tensor
    activation: Tensor
    relevance_top: Tensor
    activation_top: Tensor


def _activations(model: nn.Module, inputs: Tensor, step: int) -> Tensor:
    network = read_network(model)
    with torch.no_grad():
        current = network.normalize(inputs.detach())
        for layer in network.steps[: step + 1]:
            current = layer(current)
    return current.flatten(2).amax(2) if current.ndim > 2 else current


def concept_atlas(
    model: nn.Module,
    data: Tensor | ImageData,
    *,
    layer: str,
    top: int = 8,
    target: Tensor | int | None = None,
    rules: str | Composite | None = None,
    batch_size: int = 512,
) -> ConceptAtlas:
    """RelMax and ActMax reference inputs for every concept of ``layer``.

    Args:
        model: as for ``lrp``.
        data: (N, ...) inputs in [0, 1], or an :class:`~vulnscope.data.ImageData`.
        layer: dotted name of the layer whose channels are the concepts.
        top: inputs kept per concept, k <= N.
        target: the class explained per input ((N,) or one int); ``None``: the class the
            model predicts.
        rules: as for ``lrp``.
        batch_size: inputs per propagation.

    Returns:
        :class:`ConceptAtlas`; :func:`vulnscope.explain.plots.plot_concept_atlas` draws it.

    """
    x = check_tensor(data.x if isinstance(data, ImageData) else data, "data")
    top = check_int(top, "top")
    batch_size = check_int(batch_size, "batch_size")
    step = check_layer(read_network(model), layer)
    if x.ndim < 2 or top > x.shape[0]:
        raise InvalidArgumentError(
            f"data must hold at least top = {top} inputs, got shape {tuple(x.shape)}"
        )
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(1)
    elif not isinstance(target, int | Tensor):
        raise InvalidTypeError(f"target must be None, an int or a tensor, got {describe(target)}")
    targets = target if isinstance(target, Tensor) else torch.full((x.shape[0],), target)
    relevance = torch.cat([
        concept_relevance(model, x[i : i + batch_size], targets[i : i + batch_size],
                          layer=layer, rules=rules)
        for i in range(0, x.shape[0], batch_size)
    ])  # fmt: skip
    activation = _activations(model, x, step)
    return ConceptAtlas(
        layer,
        relevance,
        activation,
        relevance.topk(top, dim=0).indices.T.contiguous(),
        activation.topk(top, dim=0).indices.T.contiguous(),
    )
