"""The data sets of "Adversarial examples are not bugs, they are features".

Ilyas, Santurkar, Tsipras, Engstrom, Tran and Madry (2019) separate what a classifier
uses into *robust* features (predictive, and still so under small perturbations) and
*non-robust* ones (predictive, yet flipped by a perturbation a person cannot see). Three
constructions put this to the test; a fresh model trained on each is then scored on the
original test set:

- :func:`non_robust_dataset`: each training image is pushed by a targeted L2 PGD attack
  on a standard model towards a new class ``t`` and *relabelled* ``t``. Its robust
  features still show the old class; only the non-robust features the attack planted
  agree with the label. ``"det"`` (D_det) takes ``t = (y + 1) mod C``, so the robust
  features are anti-correlated with the label; ``"rand"`` (D_rand) draws ``t``
  uniformly among the other classes, so they are uncorrelated. A model trained on either
  that classifies the clean test set above chance has learned features that generalise,
  planted by perturbations alone.
- :func:`relabelled_clean`: the control. The same relabelling with no perturbation: a
  model that still scored above chance would owe it to the labels, not to the features.
- :func:`robust_dataset`: D_R, images rebuilt to match a robust model's penultimate
  representation (from a random other image) with their original labels, so that they
  keep mostly the features the robust model uses; a standard training on D_R gains
  robustness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._validation import (
    check_bounds,
    check_choice,
    check_inputs,
    check_int,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model,
    check_real,
    check_seed,
    check_tensor,
)
from vulnscope.attacks.norms import lp_norm
from vulnscope.attacks.pgd import PGD
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models.state import preserved_model_state

__all__ = [
    "MODES",
    "RelabelledData",
    "RobustData",
    "non_robust_dataset",
    "relabel_targets",
    "relabelled_clean",
    "robust_dataset",
]

MODES = ("det", "rand")
"""How :func:`relabel_targets` picks the new label: ``(y + 1) mod C`` or a random other class."""


@dataclass(frozen=True)
class RelabelledData:
    """Images relabelled with a new class, perturbed towards it or not (the control).

    Attributes:
        x: (N, ...) the images: adversarial towards ``y`` (D_det, D_rand) or the clean
            inputs unchanged (the control).
        y: (N,) int64, the new labels (the targets); never the original label.
        original_labels: (N,) int64, the labels the images came with.
        perturbation_norms: (N,) L2 norm of ``x - inputs`` (zeros for the control).
        reached_target: (N,) bool, whether the source model classifies ``x`` as ``y``;
            ``None`` for the control, which has no source model.
        mode: ``"det"`` or ``"rand"``.
        eps: the attack's L2 budget (0 for the control).

    """

    x: Tensor
    y: Tensor
    original_labels: Tensor
    perturbation_norms: Tensor
    reached_target: Tensor | None
    mode: str
    eps: float

    @property
    def success_rate(self) -> float | None:
        """Fraction of images the source model assigns to their new label (None: control)."""
        if self.reached_target is None:
            return None
        return float(self.reached_target.float().mean())


@dataclass(frozen=True)
class RobustData:
    """Images rebuilt from a robust model's representation (Ilyas et al.'s D_R).

    Attributes:
        x: (N, ...) the rebuilt images, inside the bounds.
        y: (N,) int64, the labels of the images whose representation they match.
        start_index: (N,) int64, the input each reconstruction started from (never its own).
        start_distance: (N,) L2 distance in representation space at the start.
        final_distance: (N,) L2 distance at the returned image (the best iterate).
        target_norm: (N,) L2 norm of each target representation, the scale of the two.

    """

    x: Tensor
    y: Tensor
    start_index: Tensor
    start_distance: Tensor
    final_distance: Tensor
    target_norm: Tensor


def relabel_targets(labels: Tensor, *, mode: str, num_classes: int, seed: int | None) -> Tensor:
    """The new labels of D_det (``(y + 1) mod C``) or D_rand (uniform over the other classes).

    Args:
        labels: (N,) int64 in ``[0, num_classes)``.
        mode: ``"det"`` or ``"rand"``.
        num_classes: C, at least 2.
        seed: seed of the draw of ``"rand"`` (unused by ``"det"``).

    Returns:
        (N,) int64 targets, none equal to its label.

    """
    labels = check_tensor(labels, "labels", of=" of class indices")
    if labels.ndim != 1:
        raise InvalidArgumentError(f"labels must have shape (N,), got shape {tuple(labels.shape)}")
    labels = check_labels(labels, n=labels.shape[0], device=labels.device, name="labels")
    mode = check_choice(mode, "mode", MODES)
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    check_labels_in_range(labels, num_classes, "labels")
    if mode == "det":
        return (labels + 1) % num_classes
    generator = make_generator(check_seed(seed))
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift.to(labels.device)) % num_classes


def non_robust_dataset(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    mode: str = "det",
    eps: float,
    steps: int = 100,
    step_size: float | None = None,
    seed: int | None = 0,
    num_classes: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> RelabelledData:
    """D_det or D_rand: targeted L2 PGD towards a new label, then relabel to it.

    Ilyas et al. (2019), Section 3.2: for each ``(x, y)``, ``x' = argmin_{||x' - x||_2 <=
    eps} CE(f(x'), t)`` by ``steps`` normalised-gradient steps from ``x`` (they take eps
    0.5, step 0.1, 100 steps on CIFAR-10), and ``(x', t)`` joins the new data set.

    Args:
        model: the standard classifier whose non-robust features the attack plants,
            (N, ...) -> (N, C) logits, eval mode.
        inputs: (N, ...) images inside ``bounds``.
        labels: (N,) their labels.
        mode: ``"det"`` (``t = (y + 1) mod C``) or ``"rand"`` (``t`` uniform among the
            other classes, drawn from ``seed``).
        eps: L2 budget, > 0.
        steps: PGD steps.
        step_size: step length; ``None`` for ``eps / 5`` (Ilyas et al.'s ratio).
        seed: seed of the targets of ``"rand"``.
        num_classes: C; ``None`` for the model's number of outputs.
        bounds: valid input range.

    Returns:
        :class:`RelabelledData`.

    """
    eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
    steps = check_int(steps, "steps")
    step_size = eps / 5 if step_size is None else check_real(step_size, "step_size", minimum=0.0)
    model = check_model(model)  # type: ignore[assignment]
    inputs = check_inputs(inputs, bounds=check_bounds(bounds), name="inputs")
    labels = check_labels(labels, n=inputs.shape[0], device=inputs.device, name="labels")
    classes = _model_classes(model, inputs) if num_classes is None else num_classes
    targets = relabel_targets(labels.cpu(), mode=mode, num_classes=classes, seed=seed)
    attack = PGD(
        norm="l2",
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=False,
        targeted=True,
        bounds=bounds,
        seed=seed,
    )
    result = attack(model, inputs, labels, target=targets.to(inputs.device))
    return RelabelledData(
        x=result.x_adv,
        y=targets.to(inputs.device),
        original_labels=labels,
        perturbation_norms=result.norms,
        reached_target=result.success,
        mode=mode.lower(),
        eps=eps,
    )


def relabelled_clean(
    inputs: Tensor,
    labels: Tensor,
    *,
    mode: str = "det",
    num_classes: int,
    seed: int | None = 0,
) -> RelabelledData:
    """The control: the labels of D_det or D_rand (same ``seed``) on the unperturbed images.

    A model trained on it sees features that agree with the *old* label only, so on the
    original test set it should score near chance (``"rand"``) or below (``"det"``,
    which learns the shifted labelling). Above chance, the non-robust-feature result would
    be label leakage rather than features.

    Args:
        inputs: (N, ...) images.
        labels: (N,) their labels.
        mode: ``"det"`` or ``"rand"``.
        num_classes: C.
        seed: seed of the targets of ``"rand"``.

    Returns:
        :class:`RelabelledData` with ``x`` equal to ``inputs``.

    """
    inputs = check_inputs(inputs, bounds=(-float("inf"), float("inf")), name="inputs")
    labels = check_labels(labels, n=inputs.shape[0], device=inputs.device, name="labels")
    targets = relabel_targets(labels.cpu(), mode=mode, num_classes=num_classes, seed=seed)
    return RelabelledData(
        x=inputs.detach().clone(),
        y=targets.to(inputs.device),
        original_labels=labels,
        perturbation_norms=inputs.new_zeros(inputs.shape[0]),
        reached_target=None,
        mode=mode.lower(),
        eps=0.0,
    )


def robust_dataset(
    robust_model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    layer: str | None = None,
    steps: int = 1000,
    step_size: float = 0.1,
    seed: int | None = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> RobustData:
    r"""D_R: images that match a robust model's representation, rebuilt from other images.

    Ilyas et al. (2019), Section 3.1: for each ``(x, y)``, start from a random other input
    ``x_r`` and minimise :math:`\|g(x_r) - g(x)\|_2` over ``x_r`` by normalised gradient
    descent inside the bounds (they take 1000 steps of 0.1 on CIFAR-10), where ``g`` is
    the robust model's penultimate representation; ``(x_r, y)`` joins D_R. Each image
    keeps its best iterate (the smallest distance seen).

    Args:
        robust_model: an adversarially trained ``nn.Module``, eval mode.
        inputs: (N, ...) images inside ``bounds``, N >= 2.
        labels: (N,) their labels, kept as D_R's labels.
        layer: the name of the module whose output is the representation (one of
            ``robust_model.named_modules()``); ``None`` for the input of the last module
            (the penultimate representation of a sequential classifier).
        steps: descent steps.
        step_size: L2 length of each step, > 0.
        seed: seed of the choice of starting images.
        bounds: valid input range.

    Returns:
        :class:`RobustData`.

    """
    if not isinstance(robust_model, nn.Module):
        raise InvalidTypeError(
            f"robust_model must be a torch.nn.Module, got {type(robust_model).__name__}"
        )
    if isinstance(robust_model, torch.jit.ScriptModule):
        raise InvalidTypeError(
            "robust_model must be a plain torch.nn.Module, got a TorchScript module (which "
            "takes no forward hooks); load its state_dict into the original class"
        )
    bounds = check_bounds(bounds)
    inputs = check_inputs(inputs, bounds=bounds, name="inputs")
    labels = check_labels(labels, n=inputs.shape[0], device=inputs.device, name="labels")
    if inputs.shape[0] < 2:
        raise InvalidArgumentError(
            f"inputs must hold at least 2 images (each starts from another), "
            f"got shape {tuple(inputs.shape)}"
        )
    steps = check_int(steps, "steps")
    step_size = check_real(step_size, "step_size", minimum=0.0, exclusive=True)
    module = _representation_module(robust_model, layer)
    n = inputs.shape[0]
    generator = make_generator(check_seed(seed))
    start = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n
    start = start.to(inputs.device)
    with preserved_model_state(robust_model), torch.enable_grad():
        target = _represent(robust_model, module, layer, inputs).detach()
        x = inputs[start].detach().clone()
        best = x.clone()
        best_distance = torch.full((n,), float("inf"), dtype=inputs.dtype, device=x.device)
        start_distance = None
        for _ in range(steps + 1):
            x.requires_grad_(True)
            distance = (_represent(robust_model, module, layer, x) - target).flatten(1).norm(dim=1)
            if start_distance is None:
                start_distance = distance.detach().clone()
            better = distance.detach() < best_distance
            best[better] = x.detach()[better]
            best_distance = torch.where(better, distance.detach(), best_distance)
            (grad,) = torch.autograd.grad(distance.sum(), x)
            length = lp_norm(grad, "l2").clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
            x = (x.detach() - step_size * grad / length).clamp(*bounds)
    return RobustData(
        x=best,
        y=labels,
        start_index=start,
        start_distance=start_distance if start_distance is not None else best_distance,
        final_distance=best_distance,
        target_norm=target.flatten(1).norm(dim=1),
    )


def _model_classes(model: Any, inputs: Tensor) -> int:
    with preserved_model_state(model), torch.no_grad():
        return int(check_logits(model(inputs[:1]), 1).shape[1])


def _representation_module(model: nn.Module, layer: str | None) -> nn.Module:
    modules = dict(model.named_modules())
    if layer is None:
        leaves = [m for name, m in modules.items() if name and not list(m.children())]
        if not leaves:
            raise InvalidArgumentError(
                "robust_model has no submodules: name the representation with layer=..."
            )
        module: nn.Module = leaves[-1]
        return module
    if not isinstance(layer, str) or layer not in modules or not layer:
        names = [name for name in modules if name]
        raise InvalidArgumentError(
            f"layer must be one of the model's modules {names}, got {layer!r}"
        )
    named: nn.Module = modules[layer]
    return named


def _represent(model: nn.Module, module: nn.Module, layer: str | None, x: Tensor) -> Tensor:
    """The input of ``module`` (``layer`` None) or its output, from one forward pass."""
    captured: list[Tensor] = []
    if layer is None:
        handle = module.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda _, __, out: captured.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[-1]
