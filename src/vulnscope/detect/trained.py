"""What the trained detectors share: their adversarial training data, networks and seeds.

Grosse et al.'s extra class (:mod:`~vulnscope.detect.extra_class`), Gong et al.'s binary
classifier (:mod:`~vulnscope.detect.binary`) and Metzen et al.'s subnetwork
(:mod:`~vulnscope.detect.subnetwork`) all learn from the classifier's clean training
inputs beside adversarial examples of the same inputs, made by an attack on the
classifier; all build a small network whose initialisation and minibatch order come from
the detector's generator; all are trained with
:func:`vulnscope.models.training.train_classifier`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vulnscope._validation import check_choice, check_eps, check_int
from vulnscope.attacks import FGSM, PGD
from vulnscope.detect.base import Detector
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import DigitsCNN
from vulnscope.models.training import train_classifier

__all__ = [
    "ARCHITECTURES",
    "TRAINING_ATTACKS",
    "TrainedDetector",
    "adversarial_examples",
    "check_training",
    "draw_seed",
    "network",
    "seeded_reset",
    "train",
]

Model = Callable[[Tensor], Tensor]

TRAINING_ATTACKS = ("fgsm", "pgd")
"""The attacks a trained detector can learn from: FGSM (Goodfellow et al. 2015, Grosse et
al.'s and Gong et al.'s) and L-inf PGD (Madry et al. 2018; the iterative attack of Metzen
et al.)."""

ARCHITECTURES = ("digits-cnn", "mlp")
"""The networks of the input-space detectors: a :class:`~vulnscope.models.DigitsCNN`
(1×8×8 inputs only) or a two-layer ReLU perceptron on the flattened input (any shape)."""

_PGD_STEPS = 10


def check_training(
    *, attack: str, eps: float, epochs: int, architecture: str | None = None
) -> tuple[str, float, int, str | None]:
    """The settings every trained detector validates: its attack, budget and epochs."""
    return (
        check_choice(attack, "attack", TRAINING_ATTACKS),
        check_eps(eps, "eps"),
        check_int(epochs, "epochs"),
        None if architecture is None else check_choice(architecture, "architecture", ARCHITECTURES),
    )


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (for a library call that takes a seed)."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def seeded_reset(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every submodule with ``reset_parameters`` from a seed of ``generator``.

    The layers draw their default initialisation from the global generator; the global
    state is forked, so it is left as it was.
    """
    seed = draw_seed(generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in module.modules():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset) and not getattr(child, "has_uninitialized_params", lambda: False)():
                reset()


def network(architecture: str, input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """The detector's own network for inputs of ``input_shape``, with ``outputs`` logits.

    Raises:
        InvalidArgumentError: ``"digits-cnn"`` for inputs that are not 1×8×8.

    """
    if architecture == "digits-cnn":
        if tuple(input_shape) != (1, 8, 8):
            raise InvalidArgumentError(
                f"architecture 'digits-cnn' takes (1, 8, 8) inputs, got {tuple(input_shape)}: "
                "use architecture='mlp'"
            )
        return DigitsCNN(num_classes=outputs)
    width = 1
    for size in input_shape:
        width *= size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(width, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, outputs),
    )


def adversarial_examples(
    model: Model, x: Tensor, y: Tensor, *, attack: str, eps: float, generator: torch.Generator
) -> Tensor:
    """(N, C, H, W) adversarial examples of ``model`` at ``x`` in the L-inf ``eps``-ball.

    Every attacked input is kept, the attack's failures too, as in Metzen et al.: the
    detector learns the perturbation, not only the successful ones.
    """
    method = (
        FGSM(eps=eps)
        if attack == "fgsm"
        else PGD(eps=eps, steps=_PGD_STEPS, seed=draw_seed(generator))
    )
    return method(model, x, y).x_adv.detach()


def train(
    net: nn.Module, x: Tensor, y: Tensor, *, epochs: int, generator: torch.Generator
) -> nn.Module:
    """Initialise ``net`` from ``generator``, train it on ``(x, y)`` with Adam, eval mode."""
    net.to(x.device)
    seeded_reset(net, generator)
    return train_classifier(net, x, y, epochs=epochs, batch_size=64, seed=draw_seed(generator))


class TrainedDetector(Detector):
    """A detector that is a network of its own trained on clean inputs and attacked ones.

    Holds the settings Grosse et al.'s extra class and Gong et al.'s binary classifier
    share; subclasses build the network and say how its outputs are labelled and scored.

    Args:
        attack: the attack the adversarial examples come from, ``"fgsm"`` or ``"pgd"``
            (L-inf, 10 steps).
        eps: its L-inf budget (inputs in [0, 1]).
        epochs: training epochs.
        architecture: ``"digits-cnn"`` (a :class:`~vulnscope.models.DigitsCNN`, 1×8×8
            inputs) or ``"mlp"`` (any input shape).

    """

    def __init__(
        self,
        *,
        attack: str = "fgsm",
        eps: float = 0.1,
        epochs: int = 20,
        architecture: str = "digits-cnn",
    ) -> None:
        super().__init__()
        self.attack, self.eps, self.epochs, checked = check_training(
            attack=attack, eps=eps, epochs=epochs, architecture=architecture
        )
        self.architecture = str(checked)
