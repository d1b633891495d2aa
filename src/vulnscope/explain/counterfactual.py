r"""Counterfactuals found in a normalising flow's latent coordinates, beside adversarial examples.

Dombrowski, Gerken and Kessel (2021, 2023), "Diffeomorphic counterfactuals with generative
models": with a flow ``g`` (latent ``z`` to image ``x = g(z)``), gradient ascent on the
target class's log-probability in the latent coordinates,

.. math:: z_{t+1} = z_t + \eta \, \frac{\nabla_z \log p_f(t \mid g(z_t))}
                                     {\|\nabla_z \log p_f(t \mid g(z_t))\|_2},

moves the image along the data manifold the flow has learned: the gradient in ``z`` is
the input gradient pulled back through ``g``'s Jacobian, whose directions off the
manifold are contracted. An adversarial example of the same point and target (by
default FAB's smallest targeted L2 perturbation, Croce and Hein 2020) reaches the class by a much
smaller change that the flow finds far less likely. The steps are normalised so that
``step_size`` is a length in latent space; a point stops once the model gives the target
class ``confidence``. Images leave the flow clipped to [0, 1], the model's input box.
The ascent is deterministic; the attack brings its own seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import (
    check_fraction,
    check_inputs,
    check_int,
    check_labels_in_range,
    check_logits,
    check_model,
    check_real,
    describe,
)
from vulnscope.attacks.base import Attack
from vulnscope.attacks.fab import FAB
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.explain.flow import AffineCouplingFlow

__all__ = ["DEFAULT_ATTACK", "Counterfactual", "OnManifoldFigures", "counterfactual"]

DEFAULT_ATTACK = FAB(norm="l2", targeted=True, steps=100, seed=0)
"""The adversarial example beside each counterfactual: FAB's smallest targeted L2 change.

Not Carlini-Wagner: its tanh change of variables cannot move a pixel that sits at 0 or 1
(about half of a digit's), and targeted on the digits CNN it failed on 13 of 20 points."""


@dataclass(frozen=True)
class OnManifoldFigures:
    """How far a changed image is from its input and how likely the flow finds it.

    Attributes:
        x: (N, C, H, W) the changed images.
        reached: (N,) bool, the model classifies them as the target.
        distance: (N,) L2 distance to the inputs.
        log_prob: (N,) log-density under the flow, nats per image.

    """

    x: Tensor
    reached: Tensor
    distance: Tensor
    log_prob: Tensor


@dataclass(frozen=True)
class Counterfactual:
    """Counterfactuals, their paths, and the adversarial examples of the same points.

    Attributes:
        counterfactual: :class:`OnManifoldFigures` of the counterfactuals.
        path: (N, steps + 1, C, H, W) the image at every step, the input's flow image
            first (a point that reached ``confidence`` stays where it stopped).
        target: (N,) the target classes.
        input_log_prob: (N,) the inputs' log-density under the flow, nats per image.
        adversarial: :class:`OnManifoldFigures` of the adversarial examples, or ``None``
            when ``attack=None``.

    """

    counterfactual: OnManifoldFigures
    path: Tensor
    target: Tensor
    input_log_prob: Tensor
    adversarial: OnManifoldFigures | None


def _targets(target_class: object, n: int, classes: int) -> Tensor:
    if isinstance(target_class, int) and not isinstance(target_class, bool):
        target = torch.full((n,), target_class, dtype=torch.int64)
    elif isinstance(target_class, Tensor) and not target_class.is_floating_point():
        target = target_class.reshape(-1).long().cpu()
        if target.shape != (n,) and target.numel() != 1:
            raise InvalidArgumentError(
                f"target_class must be one int or ({n},) classes, got shape "
                f"{tuple(target_class.shape)}"
            )
        target = target.expand(n).clone()
    else:
        raise InvalidTypeError(
            f"target_class must be an int or an integer tensor, got {describe(target_class)}"
        )
    if bool((target < 0).any()):
        raise InvalidArgumentError(
            f"target_class must be in [0, {classes}), got minimum {int(target.min())}"
        )
    check_labels_in_range(target, classes, "target_class")
    return target


def _figures(
    model: Callable[[Tensor], Tensor],
    flow: AffineCouplingFlow,
    inputs: Tensor,
    x: Tensor,
    target: Tensor,
) -> OnManifoldFigures:
    with torch.no_grad():
        reached = model(x).argmax(1).cpu() == target
        return OnManifoldFigures(
            x=x,
            reached=reached,
            distance=(x - inputs).flatten(1).norm(dim=1),
            log_prob=flow.log_prob(x),
        )


def counterfactual(
    model: Callable[[Tensor], Tensor],
    flow: AffineCouplingFlow,
    inputs: Tensor,
    target_class: int | Tensor,
    *,
    steps: int = 100,
    step_size: float = 0.25,
    confidence: float = 0.9,
    attack: Attack | None = DEFAULT_ATTACK,
) -> Counterfactual:
    """Diffeomorphic counterfactuals towards ``target_class``, and adversarial examples.

    Args:
        model: classifier of (N, C, H, W) images in [0, 1] to (N, K) logits.
        flow: a flow of images of the same shape (:class:`AffineCouplingFlow`).
        inputs: (N, C, H, W) images in [0, 1].
        target_class: one class for every input, or (N,) classes, each in [0, K).
        steps: gradient steps in latent space.
        step_size: L2 length of each step in latent space (> 0).
        confidence: a point stops once the model's probability of the target is this high.
        attack: a targeted vulnscope attack run on the same points and targets (labels:
            the model's own predictions), or ``None`` to skip the comparison.

    Returns:
        :class:`Counterfactual`.

    """
    model = check_model(model)
    if not isinstance(flow, AffineCouplingFlow):
        raise InvalidTypeError(f"flow must be an AffineCouplingFlow, got {describe(flow)}")
    inputs = check_inputs(inputs, bounds=(0.0, 1.0), name="inputs")
    if tuple(inputs.shape[1:]) != flow.shape:
        raise InvalidArgumentError(
            f"flow models images of shape {flow.shape} but inputs (what the model reads) "
            f"have shape {tuple(inputs.shape[1:])}; train a flow on the model's inputs"
        )
    steps = check_int(steps, "steps")
    step_size = check_real(step_size, "step_size", minimum=0.0, exclusive=True)
    confidence = check_fraction(confidence, "confidence")
    with torch.no_grad():
        logits = check_logits(model(inputs), inputs.shape[0])
    target = _targets(target_class, inputs.shape[0], logits.shape[1])
    on_device = target.to(inputs.device)
    with torch.no_grad():
        z = flow(inputs)[0]
    path = [flow.inverse(z).clamp(0, 1).detach()]
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        log_p = model(flow.inverse(z).clamp(0, 1)).log_softmax(1).gather(1, on_device[:, None])
        (gradient,) = torch.autograd.grad(log_p.sum(), z)
        active = (log_p.detach().squeeze(1).exp() < confidence).to(z.dtype)
        norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (step_size * active / norms).view(-1, *([1] * (z.ndim - 1)))
        z = z.detach() + scale * gradient
        with torch.no_grad():
            path.append(flow.inverse(z).clamp(0, 1))
    found = _figures(model, flow, inputs, path[-1], target)
    adversarial = None
    if attack is not None:
        if not isinstance(attack, Attack) or not getattr(attack, "targeted", False):
            raise InvalidArgumentError(
                f"attack must be a targeted vulnscope Attack (targeted=True), got "
                f"{describe(attack)}"
            )
        result = attack(model, inputs, logits.argmax(1), target=on_device)
        adversarial = _figures(model, flow, inputs, result.x_adv, target)
    with torch.no_grad():
        input_log_prob = flow.log_prob(inputs)
    return Counterfactual(
        counterfactual=found,
        path=torch.stack(path, 1),
        target=target,
        input_log_prob=input_log_prob,
        adversarial=adversarial,
    )
