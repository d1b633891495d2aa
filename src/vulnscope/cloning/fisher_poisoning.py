r"""Output poisoning along the top eigenvector of the reverse model's Fisher information.

Kenway (2018b, "Protection against Cloning for Deep Learning", eqs. 19-22): a cloner
learns from each published output ``y`` what inputs go with it, through the generation
pass ``q̃_0(x | y)``. The change of ``y`` that most changes that distribution, per unit of
size, is the top eigenvector ``u_1`` of its Fisher information

.. math:: \tilde F(y) = E_{x \sim \tilde q_0(x|y)}\big[\nabla_y \log \tilde q_0(x|y)\,
          \nabla_y \log \tilde q_0(x|y)^\top\big],

restricted to directions that keep ``y`` a probability vector (``P F̃ P`` with
``P = I - 11ᵀ/C``). Publishing ``y + δy``, ``δy ∝ u_1``, small enough that the arg-max
class never changes, leaves the labels intact and does the most damage to the clone.

At a finite L1 budget the same principle asks for the largest ``δyᵀ F̃ δy`` among the
changes of that L1 size that keep ``y`` in the simplex with its class. A convex quadratic
on the L1 sphere of the sum-zero plane peaks at its vertices ``(b/2)(e_j - e_k)``, and at a
confident output (every other probability near zero) only mass moved off the top class
onto others stays valid, where the peak is again a vertex: eigenvector steps are
clipped by the simplex there. ``search="l1"`` (the default) therefore takes the best of
the ``C(C - 1)`` vertex directions and ``±u_1``, each followed along the simplex;
``search="eigenvector"`` follows ``u_1`` alone, the literal infinitesimal recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from vulnscope._validation import check_choice, check_real, describe
from vulnscope.cloning.defence import OutputDefence
from vulnscope.cloning.reverse import ReverseModel
from vulnscope.cloning.simplex import check_budget, search_along, sum_zero_basis
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

__all__ = [
    "FisherPoisoning",
    "strongest_fisher_step",
    "top_output_direction",
]

FisherSearch = Literal["l1", "eigenvector"]


def top_output_direction(fisher: Tensor, probs: Tensor) -> Tensor:
    """The unit top eigenvector of ``P F̃ P`` per row, oriented away from the arg-max class.

    Computed in the (C - 1)-dimensional sum-zero subspace
    (:func:`~vulnscope.cloning.simplex.sum_zero_basis`), so the result sums to zero even
    where ``F̃`` vanishes there. Eigenvectors have no sign of their
    own: each is oriented so that it does not raise the probability of the class ``probs``
    puts first (the sign that can take the larger budget on a confident output).

    Args:
        fisher: (B, C, C) symmetric PSD matrices.
        probs: (B, C) the outputs they belong to.

    Returns:
        (B, C) float64, unit L2 norm, rows summing to zero.

    """
    classes = fisher.shape[-1]
    basis = sum_zero_basis(classes).to(fisher.device)
    reduced = basis.T @ fisher @ basis
    _, vectors = torch.linalg.eigh(0.5 * (reduced + reduced.transpose(-1, -2)))
    direction = vectors[..., -1] @ basis.T
    first = direction.gather(-1, probs.argmax(-1, keepdim=True))
    return torch.where(first > 0, -direction, direction)


class FisherPoisoning(OutputDefence):
    """Poison each output along the top eigenvector of the reverse model's Fisher information.

    Kenway (2018b), "Protection against Cloning for Deep Learning", eqs. 19-22. For each
    true output ``p``, ``F̃ = reverse.output_fisher(p)``; ``u_1`` is the top eigenvector of
    ``P F̃ P`` (``P = I - 11ᵀ/C``; :func:`top_output_direction`); the published vector is
    :func:`~vulnscope.cloning.simplex.perturb_along` of ``p`` along ``u_1`` (then
    ``-u_1``) by the L1 ``budget``, the arg-max class kept with ``margin``
    (``search="eigenvector"``), or the step of that size with the largest ``δyᵀ F̃ δy``
    among ``±u_1`` and the vertex directions ``e_j - e_k`` (``search="l1"``, the default;
    :func:`strongest_fisher_step`).

    Args:
        model: the victim classifier (logits out).
        budget: the L1 size of the poisoning per output, in ``(0, 2(1 - 1/C))``.
        reverse: the :class:`~vulnscope.cloning.reverse.ReverseModel` giving ``F̃``. For a
            :class:`~vulnscope.rbm.DeepRBM` victim it defaults to its own generation pass
            (:class:`~vulnscope.cloning.generation_fisher.GenerationPassFisher`); any other
            classifier needs one, e.g. ``ConditionalDecoder.fit(...)``
            (:mod:`vulnscope.cloning.decoder`).
        margin: the smallest gap to the runner-up class a poisoned output keeps.
        seed: seed of the default reverse model's sampling.
        search: ``"l1"`` or ``"eigenvector"`` (see above).

    Shape:
        Input (B, ...) queries; output (B, C) float64 probability vectors.

    """

    preserves_argmax = True

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        budget: float,
        *,
        reverse: ReverseModel | None = None,
        margin: float = 1e-3,
        seed: int | None = 0,
        search: FisherSearch = "l1",
    ) -> None:
        super().__init__(model, seed=seed)
        self.search = check_choice(search, "search", ("l1", "eigenvector"))
        if reverse is None:
            reverse = _default_reverse(self.model, self._key)
        elif not isinstance(reverse, ReverseModel):
            raise InvalidTypeError(
                "reverse must be a vulnscope.cloning.reverse.ReverseModel (num_classes and "
                f"output_fisher), got {describe(reverse)}"
            )
        self.reverse = reverse
        classes = reverse.num_classes
        model_classes = getattr(self.model, "num_classes", None)
        if isinstance(model_classes, int) and model_classes != classes:
            raise InvalidArgumentError(
                f"reverse.num_classes must match the model's {model_classes} classes, got {classes}"
            )
        self.budget = check_budget(budget, classes)
        self.margin = check_real(margin, "margin", minimum=0.0)

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """Each output moved along its top Fisher direction by the budget, class kept."""
        classes = self.reverse.num_classes
        if probs.shape[1] != classes:
            raise InvalidArgumentError(
                f"reverse.num_classes must match the model's {probs.shape[1]} classes, "
                f"got {classes}"
            )
        fisher = self.reverse.output_fisher(probs)
        expected = (probs.shape[0], classes, classes)
        if not isinstance(fisher, Tensor) or tuple(fisher.shape) != expected:
            raise ModelError(
                f"reverse.output_fisher must return a tensor of shape {expected}, "
                f"returned {describe(fisher)}"
            )
        fisher = fisher.detach().to(device=probs.device, dtype=torch.float64)
        if not bool(torch.isfinite(fisher).all()):
            raise ModelError("reverse.output_fisher returned NaN or infinite entries")
        budget = check_budget(self.budget, classes)
        if self.search == "l1":
            return strongest_fisher_step(probs, fisher, budget, margin=self.margin)
        direction = top_output_direction(fisher, probs)
        published, _, _ = search_along(
            probs, direction, budget, margin=self.margin, both_signs=True
        )
        return published


def strongest_fisher_step(probs: Tensor, fisher: Tensor, budget: float, *, margin: float) -> Tensor:
    """The published vector at L1 ``budget`` with the largest ``δᵀ F̃ δ``, class kept.

    Candidates per row: ``+u_1``, ``-u_1`` (:func:`top_output_direction`) and every vertex
    direction ``e_j - e_k``, each followed along the simplex by
    :func:`~vulnscope.cloning.simplex.search_along`. Among the candidates that spend the
    whole budget with the class kept the one with the largest quadratic form wins; where
    none does, the one that gets furthest (then the largest form). Never worse, in
    ``δᵀ F̃ δ``, than following ``u_1`` alone.

    Args:
        probs: (B, C) float64 probability vectors.
        fisher: (B, C, C) float64 symmetric PSD matrices.
        budget: the L1 size, already checked.
        margin: the smallest gap to the runner-up class kept.

    Returns:
        (B, C) float64 published vectors.

    """
    rows, classes = probs.shape
    eye = torch.eye(classes, dtype=probs.dtype, device=probs.device)
    j, k = torch.meshgrid(torch.arange(classes), torch.arange(classes), indexing="ij")
    off = j != k
    vertices = eye[j[off]] - eye[k[off]]  # (C(C-1), C)
    top = top_output_direction(fisher, probs)  # (B, C)
    candidates = torch.cat(
        [top[:, None], -top[:, None], vertices.expand(rows, -1, -1)], 1
    )  # (B, K, C)
    count = candidates.shape[1]
    repeated = probs[:, None].expand(-1, count, -1).reshape(-1, classes)
    moved, l1, reached = search_along(
        repeated, candidates.reshape(-1, classes), budget, margin=margin, both_signs=False
    )
    moved, l1, reached = (
        moved.view(rows, count, classes),
        l1.view(rows, count),
        reached.view(rows, count),
    )
    delta = moved - probs[:, None]
    form = torch.einsum("bkc,bcd,bkd->bk", delta, fisher, delta)
    # rank: whole budget spent first, then the distance reached, then the quadratic form
    furthest = l1 >= l1.amax(1, keepdim=True) - 1e-12
    eligible = torch.where(reached.any(1, keepdim=True), reached, furthest)
    choice = torch.where(eligible, form, -math.inf).argmax(1)
    return moved[torch.arange(rows), choice]


def _default_reverse(model: Any, seed: int) -> ReverseModel:
    """The generation pass of a deep RBM victim; an error naming the fix for anything else."""
    from vulnscope.rbm.network import DeepRBM

    if not isinstance(model, DeepRBM):
        raise InvalidArgumentError(
            "reverse is required unless the model is a vulnscope.rbm.DeepRBM (whose "
            "generation pass gives F̃): pass reverse=ConditionalDecoder.fit(...) from "
            f"vulnscope.cloning.decoder, got model {describe(model)} and reverse=None"
        )
    from vulnscope.cloning.generation_fisher import GenerationPassFisher

    return GenerationPassFisher(model, seed=seed)
