r"""Maximizing Angular Deviation (MAD): poison outputs to misdirect the cloner's gradient.

Orekondy, Schiele and Fritz (ICLR 2020), "Prediction Poisoning: Towards Defenses Against
DNN Model Stealing Attacks". A cloner with parameters ``w`` trained on a published vector
``y`` moves ``w`` along ``a(y) = Gᵀy / ||Gᵀy||``, ``G = ∂ log softmax(f(x; w)) / ∂w``
(C x D). MAD publishes ``ỹ = y + α (e_k - y)``: towards the vertex ``e_k`` of the simplex
whose gradient direction deviates most from the true one,

.. math:: k = \arg\max_k \|a(e_k) - a(y)\|^2 = \arg\min_k
          \frac{(K y)_k}{\sqrt{K_{kk}\, y^\top K y}}, \qquad K = G G^\top,

with ``α`` spending the L1 budget. The defender does not know the cloner's parameters,
so ``G`` is taken on a surrogate: here, by default, a copy of the victim with freshly
initialised parameters, as Orekondy et al. do (a surrogate the defender never trains).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from vulnscope._validation import check_bool, check_int, check_real, describe
from vulnscope.cloning.defence import OutputDefence, check_defence_budget
from vulnscope.cloning.simplex import check_budget, search_along
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.models.state import preserved_model_state

__all__ = ["MAD", "angular_deviations", "log_prob_gram", "untrained_copy"]


def untrained_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised, reproducibly.

    Calls ``reset_parameters()`` on every submodule that has one, under a forked random
    state seeded with ``seed``; the model itself is untouched.

    Raises:
        InvalidArgumentError: no submodule has ``reset_parameters`` (nothing would change).

    """
    clone = copy.deepcopy(model)
    devices = sorted(
        {parameter.device.index or 0 for parameter in clone.parameters() if parameter.is_cuda}
    )
    reset = 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for module in clone.modules():
            method = getattr(module, "reset_parameters", None)
            if callable(method):
                method()
                reset += 1
    if reset == 0:
        raise InvalidArgumentError(
            f"surrogate is required: none of the modules of {type(model).__name__} has "
            "reset_parameters(), so no untrained copy of it can be made; pass "
            "surrogate=<an nn.Module with the victim's outputs>"
        )
    return clone.eval()


def log_prob_gram(
    surrogate: nn.Module, x: Tensor, *, batch_size: int = 32, vectorize: bool | None = None
) -> Tensor:
    """``K = G Gᵀ`` per sample, ``G = ∂ log softmax(surrogate(x)) / ∂w`` over all parameters.

    ``torch.func.jacrev`` through ``functional_call`` (C vector-Jacobian products,
    vectorised over the classes), either one sample at a time or also vectorised over
    ``batch_size`` samples with ``torch.func.vmap`` (the Jacobians of a chunk take
    ``batch_size x C x D`` numbers). On a CPU the loop is the faster (on the digits CNN,
    one thread: about 4 ms a sample, against 7 ms vectorised over 4 and 20 ms over 32);
    on an accelerator the vectorised pass. The surrogate runs in eval mode and is left as
    it was.

    Args:
        surrogate: (B, ...) -> (B, C) logits.
        x: (B, ...) inputs, B >= 1.
        batch_size: samples per vectorised Jacobian.
        vectorize: ``True`` for ``vmap`` over samples, ``False`` for the loop, ``None``
            to choose by device (``vmap`` off the CPU).

    Returns:
        (B, C, C) float64 symmetric PSD.

    """
    parameters = {name: value.detach() for name, value in surrogate.named_parameters()}
    buffers = {name: value.detach() for name, value in surrogate.named_buffers()}

    def log_probs(weights: dict[str, Tensor], sample: Tensor) -> Tensor:
        logits: Tensor = functional_call(surrogate, (weights, buffers), (sample.unsqueeze(0),))
        return logits.log_softmax(-1).squeeze(0)

    def gram(blocks: dict[str, Tensor], leading: int) -> Tensor:
        # One product per parameter tensor, summed in float64: no copy of the whole G.
        total = torch.zeros(1, dtype=torch.float64, device=x.device)
        for block in blocks.values():
            rows = block.reshape(*block.shape[:leading], -1)
            total = total + (rows @ rows.transpose(-1, -2)).to(torch.float64)
        return total

    per_sample = jacrev(log_probs)
    if vectorize is None:
        vectorize = x.device.type != "cpu"
    with preserved_model_state(surrogate):
        surrogate.eval()
        if vectorize:
            batched = vmap(per_sample, in_dims=(None, 0))
            grams = [gram(batched(parameters, chunk), 2) for chunk in torch.split(x, batch_size)]
        else:
            grams = [gram(per_sample(parameters, sample), 1)[None] for sample in x]
    return torch.cat(grams)


def angular_deviations(gram: Tensor, probs: Tensor) -> Tensor:
    """``||a(e_k) - a(y)||²`` for every vertex ``k``: (B, C, C), (B, C) -> (B, C).

    ``a(e_k)·a(y) = (K y)_k / sqrt(K_kk yᵀ K y)``; an undefined direction (a zero
    gradient) counts as orthogonal to every other.
    """
    gram_y = (gram @ probs[:, :, None])[:, :, 0]
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0.0) * (gram_y * probs).sum(-1, True)
    cosine = torch.where(norms > 0, gram_y / norms.clamp_min(1e-300).sqrt(), 0.0)
    return 2.0 - 2.0 * cosine


class MAD(OutputDefence):
    """Maximizing Angular Deviation, arg-max preserving (MAD-argmax).

    Orekondy, Schiele and Fritz (ICLR 2020), "Prediction Poisoning: Towards Defenses
    Against DNN Model Stealing Attacks" (module docstring for the objective). Each true
    output ``y`` moves towards the vertex ``e_k`` with the largest angular deviation
    (:func:`angular_deviations` of :func:`log_prob_gram` on the surrogate), by the L1
    ``budget`` (:func:`~vulnscope.cloning.simplex.perturb_along` along ``e_k - y``, one
    sign only). Among the vertices whose segment reaches the budget with the arg-max class
    kept, the best is taken; if none does, the best-scoring vertex, as far as the class
    allows.

    Args:
        model: the victim classifier (logits out).
        budget: the L1 size of the poisoning per output, in ``(0, 2(1 - 1/C))``.
        surrogate: the network whose gradients stand in for the cloner's, (B, ...) ->
            (B, C) logits. By default a copy of ``model`` with freshly initialised
            parameters (:func:`untrained_copy`), which the defender never trains.
        margin: the smallest gap to the runner-up class a poisoned output keeps.
        seed: seed of the default surrogate's initialisation.
        batch_size: samples per vectorised Jacobian of the surrogate.
        vectorize: how :func:`log_prob_gram` runs: ``vmap`` over samples (``True``; on a
            CPU much the faster for a dense surrogate), one sample at a time (``False``;
            on a CPU the faster for a convolutional one), or ``None``, by device.

    Shape:
        Input (B, ...) queries; output (B, C) float64 probability vectors.

    """

    preserves_argmax = True

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        budget: float,
        *,
        surrogate: nn.Module | None = None,
        margin: float = 1e-3,
        seed: int | None = 0,
        batch_size: int = 32,
        vectorize: bool | None = None,
    ) -> None:
        super().__init__(model, seed=seed)
        self.budget = check_defence_budget(budget, self.model)
        self.margin = check_real(margin, "margin", minimum=0.0)
        self.batch_size = check_int(batch_size, "batch_size")
        self.vectorize = None if vectorize is None else check_bool(vectorize, "vectorize")
        if surrogate is None:
            if not isinstance(self.model, nn.Module):
                raise InvalidArgumentError(
                    "surrogate is required when model is not a torch.nn.Module (no "
                    f"untrained copy of it can be made), got model {describe(self.model)}"
                )
            surrogate = untrained_copy(self.model, self._key)
        elif not isinstance(surrogate, nn.Module):
            raise InvalidTypeError(
                f"surrogate must be a torch.nn.Module, got {describe(surrogate)}"
            )
        self.surrogate = surrogate

    def poison(self, probs: Tensor, x: Tensor) -> Tensor:
        """Each output moved towards its most deviating vertex by the budget, class kept."""
        batch, classes = probs.shape
        budget = check_budget(self.budget, classes)
        gram = log_prob_gram(
            self.surrogate, x, batch_size=self.batch_size, vectorize=self.vectorize
        ).to(probs.device)
        if gram.shape[1:] != (classes, classes):
            raise ModelError(
                f"surrogate must return {classes} logits per sample like the model, "
                f"returned {gram.shape[1]}"
            )
        scores = angular_deviations(gram, probs)
        vertices = torch.eye(classes, dtype=probs.dtype, device=probs.device)
        starts = probs[:, None, :].expand(batch, classes, classes).reshape(-1, classes)
        directions = (vertices[None] - probs[:, None, :]).reshape(-1, classes)
        moved, _, reached = search_along(
            starts, directions, budget, margin=self.margin, both_signs=False
        )
        feasible = reached.reshape(batch, classes)
        ranked = torch.where(feasible, scores, -torch.inf)
        choice = torch.where(feasible.any(-1), ranked.argmax(-1), scores.argmax(-1))
        return moved.reshape(batch, classes, classes)[torch.arange(batch), choice]
