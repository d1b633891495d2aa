"""How far an input must move along a direction before the network changes its class."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_seed
from vulnscope.diagnostics.distance import (
    class_change_distances as generic_class_change_distances,
)
from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.network import DeepRBM

__all__ = ["class_change_distances", "frozen_noise_classifier", "mean_field_gradient_directions"]


def frozen_noise_classifier(network: DeepRBM, *, chains: int = 256, seed: int | None = 0):  # type: ignore[no-untyped-def]
    """The sampled classification pass with its random numbers fixed (common random numbers).

    Every input is classified with the same ``chains`` sets of uniforms, so the decision
    is a deterministic, piecewise-constant function of ``x`` and a distance along a
    direction measures the network, not the sampling noise. The label layer is
    Rao-Blackwellised (its softmax averaged over chains).

    Returns:
        A function (B, n_0) -> (B,) predicted classes.

    """
    chains = check_int(chains, "chains")
    generator = make_generator(check_seed(seed))
    uniforms = [torch.rand(chains, width, generator=generator) for width in network.widths[1:]]

    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        state = x.reshape(x.shape[0], 1, -1).to(network.rbms[0].weight.dtype)
        for rbm, uniform in zip(network.rbms[:-1], uniforms, strict=True):
            state = (uniform < rbm.hidden_probs(state)).to(state.dtype)
        return network.rbms[-1].hidden_probs(state).mean(1).argmax(-1)

    return predict


def mean_field_gradient_directions(network: DeepRBM, x: Tensor, classes: Tensor) -> Tensor:
    """Unit gradients of the mean-field surrogate's loss ``-log p(class | x)``: (B, n_0)."""
    inputs = network.flatten_input(x).detach().requires_grad_(True)
    loss = torch.nn.functional.nll_loss(network(inputs), classes, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, inputs)
    unit: Tensor = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return unit


def class_change_distances(
    network: DeepRBM,
    x: Tensor,
    directions: Tensor,
    *,
    max_norm: float = 6.0,
    steps: int = 24,
    refine: int = 8,
    both_signs: bool = True,
    chains: int = 256,
    seed: int | None = 0,
    batch_points: int = 512,
) -> Tensor:
    """Smallest L2 step along each direction that changes the sampled pass's class.

    A grid of ``steps`` norms up to ``max_norm`` brackets the first change, then
    ``refine`` bisections narrow it (resolution ``max_norm / steps / 2**refine``). The
    class is that of :func:`frozen_noise_classifier` (fixed random numbers). Inputs are
    moved in the continuous relaxation (not clipped to [0, 1]), so that every direction is
    compared at equal norm.

    Args:
        network: the classifier.
        x: (B, ...) inputs.
        directions: (B, D, n_0) directions (normalised here to unit L2 norm).
        max_norm: largest step searched; directions that never change the class get ``inf``.
        steps: grid points.
        refine: bisection steps.
        both_signs: also search along ``-d`` and keep the smaller distance (eigenvectors
            have no sign).
        chains: chains of the classifier.
        seed: seed of the classifier's random numbers.
        batch_points: inputs classified per call.

    Returns:
        (B, D) distances.

    """
    inputs = network.flatten_input(x).detach()
    if directions.ndim != 3 or directions.shape[:1] + directions.shape[2:] != (
        inputs.shape[0],
        inputs.shape[1],
    ):
        raise InvalidArgumentError(
            f"directions must have shape ({inputs.shape[0]}, D, {inputs.shape[1]}), "
            f"got {tuple(directions.shape)}"
        )
    return generic_class_change_distances(
        frozen_noise_classifier(network, chains=chains, seed=seed),
        inputs,
        directions,
        max_distance=max_norm,
        both_signs=both_signs,
        steps=steps,
        refine=refine,
        batch_points=batch_points,
    )
