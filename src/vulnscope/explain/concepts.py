"""Vulnerability through explanations: the concepts a perturbation switches on and off.

For clean inputs ``x`` (true class ``y``) and perturbed ones ``x'`` (an adversarial
example, or a step along the input Fisher's dangerous direction), the concept relevance
of :func:`~vulnscope.explain.crp.concept_relevance` is taken at each layer for the true
class and for the class the model gives ``x'``. A concept the perturbation *switches on*
gains most relevance for the new class, ``R_new(x') - R_new(x)``; one it *switches off*
loses most for the true class, ``R_y(x) - R_y(x')``. Where the switched-on concepts act in
the input is their CRP heatmap on ``x'`` (Achtibat et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._validation import check_inputs, check_int, check_labels, check_real
from vulnscope.attacks.base import Attack
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.errors import InvalidArgumentError
from vulnscope.explain.crp import concept_relevance, crp
from vulnscope.explain.lrp import Composite

__all__ = ["ConceptShift", "LayerShift", "concept_shift", "fisher_concept_shift"]


@dataclass(frozen=True)
class LayerShift:
    """How a perturbation changes one layer's concepts.

    Attributes:
        layer: the layer's dotted name.
        true_clean: (N, C) concept relevance for the true class at the clean inputs.
        true_perturbed: (N, C) the same at the perturbed inputs.
        new_clean: (N, C) concept relevance for the perturbed inputs' class, at the clean.
        new_perturbed: (N, C) the same at the perturbed inputs.
        switched_on: (N, k) concepts with the largest ``new_perturbed - new_clean``.
        switched_off: (N, k) concepts with the largest ``true_clean - true_perturbed``.
        heatmap: (N, ...) CRP of the switched-on concepts for the new class at the
            perturbed inputs: where the perturbation acts through them.

    """

    layer: str
    true_clean: Tensor
    true_perturbed: Tensor
    new_clean: Tensor
    new_perturbed: Tensor
    switched_on: Tensor
    switched_off: Tensor
    heatmap: Tensor


@dataclass(frozen=True)
class ConceptShift:
    """Concept changes at several layers for one set of perturbed inputs.

    Attributes:
        perturbed: (N, ...) the perturbed inputs.
        labels: (N,) the true classes.
        new_labels: (N,) the classes the model gives the perturbed inputs.
        layers: one :class:`LayerShift` per layer asked for, in that order.

    """

    perturbed: Tensor
    labels: Tensor
    new_labels: Tensor
    layers: tuple[LayerShift, ...]


def _layer_shift(
    model: nn.Module,
    x: Tensor,
    x_new: Tensor,
    y: Tensor,
    y_new: Tensor,
    *,
    layer: str,
    top: int,
    rules: str | Composite | None,
) -> LayerShift:
    def relevance(inputs: Tensor, target: Tensor) -> Tensor:
        return concept_relevance(model, inputs, target, layer=layer, rules=rules)

    true_clean, true_perturbed = relevance(x, y), relevance(x_new, y)
    new_clean, new_perturbed = relevance(x, y_new), relevance(x_new, y_new)
    if top > true_clean.shape[1]:
        raise InvalidArgumentError(
            f"top must be at most the {true_clean.shape[1]} channels of layer {layer!r}, got {top}"
        )
    switched_on = (new_perturbed - new_clean).topk(top, dim=1).indices
    switched_off = (true_clean - true_perturbed).topk(top, dim=1).indices
    heatmap = crp(model, x_new, y_new, layer=layer, concepts=switched_on, rules=rules)
    return LayerShift(
        layer, true_clean, true_perturbed, new_clean, new_perturbed,
        switched_on, switched_off, heatmap,
    )  # fmt: skip


def concept_shift(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    layers: Sequence[str],
    perturbed: Tensor | None = None,
    attack: Attack | None = None,
    top: int = 3,
    rules: str | Composite | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> ConceptShift:
    """The concepts a perturbation switches on and off at each of ``layers``.

    Args:
        model: a network :func:`~vulnscope.explain.lrp.lrp` supports.
        x: (N, ...) clean inputs inside ``bounds``.
        y: (N,) their true classes.
        layers: dotted names of the layers whose channels are the concepts.
        perturbed: (N, ...) perturbed inputs (adversarial examples), or ``None`` to run
            ``attack``; exactly one of the two.
        attack: any vulnscope :class:`~vulnscope.attacks.base.Attack`.
        top: concepts reported switched on and off per input.
        rules: the LRP rules (as for ``lrp``).
        bounds: the input box.

    Returns:
        :class:`ConceptShift`.

    """
    x = check_inputs(x, bounds=bounds)
    y = check_labels(y, n=x.shape[0], device=x.device)
    top = check_int(top, "top")
    if (perturbed is None) == (attack is None):
        raise InvalidArgumentError("give exactly one of perturbed (a tensor) and attack")
    if attack is not None:
        perturbed = attack(model, x, y).x_adv
    x_new = check_inputs(perturbed, bounds=bounds, name="perturbed")
    if x_new.shape != x.shape:
        raise InvalidArgumentError(
            f"perturbed must have x's shape {tuple(x.shape)}, got {tuple(x_new.shape)}"
        )
    if isinstance(layers, str) or not layers:
        raise InvalidArgumentError(f"layers must be a non-empty list of names, got {layers!r}")
    with torch.no_grad():
        y_new = model(x_new).argmax(1)
    shifts = tuple(
        _layer_shift(model, x, x_new, y, y_new, layer=layer, top=top, rules=rules)
        for layer in layers
    )
    return ConceptShift(x_new.detach(), y, y_new, shifts)


def fisher_concept_shift(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    layers: Sequence[str],
    step: float = 1.0,
    top: int = 3,
    rules: str | Composite | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> ConceptShift:
    """:func:`concept_shift` for ``x + step * v₁``: the input Fisher's dangerous direction.

    ``v₁`` is the top eigenvector of the input Fisher information at each input (Zhao et
    al. 2019; :func:`vulnscope.diagnostics.fisher.input_fisher`), oriented to raise the
    loss of the predicted class; the step is an L2 length in input units, and the result
    is clipped to ``bounds``.

    Args:
        model: as for :func:`concept_shift`.
        x: (N, ...) clean inputs inside ``bounds``.
        y: (N,) their true classes.
        layers: dotted names of the layers whose channels are the concepts.
        step: L2 length of the move along ``v₁`` (> 0).
        top: concepts reported switched on and off per input.
        rules: the LRP rules (as for ``lrp``).
        bounds: the input box.
        seed: seed of the Fisher eigen-solver (used on its Lanczos path).

    """
    step = check_real(step, "step", minimum=0.0, exclusive=True)
    x = check_inputs(x, bounds=bounds)
    direction = input_fisher(model, x, k=1, seed=seed).eigenvectors[:, 0]
    moved = (x + step * direction).clamp(*bounds)
    return concept_shift(
        model, x, y, layers=layers, perturbed=moved, top=top, rules=rules, bounds=bounds
    )
