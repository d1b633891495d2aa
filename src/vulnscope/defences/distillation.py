r"""Defensive distillation at temperature T, and why it only hides the gradient.

Papernot, McDaniel, Wu, Jha and Swami (2016), "Distillation as a defense to adversarial
perturbations against deep neural networks":

1. train a teacher with the softmax at temperature ``T``, ``softmax(z / T)``;
2. label the training set with the teacher's soft labels ``softmax(z_teacher(x) / T)``;
3. train a student of the same architecture on the soft labels, again at ``T``;
4. deploy the student at temperature 1.

At test time the student's logits are about ``T`` times larger than a normally trained
network's, so its softmax saturates: the cross-entropy gradient ``softmax(z) - e_y``
underflows to exactly zero in float32 for most inputs, FGSM and JSMA-F (the softmax
Jacobian) get no signal, and they fail. Carlini and Wagner (2017), "Towards evaluating
the robustness of neural networks", attack the logits instead and succeed as often as on
the undistilled network: the robustness is gradient masking, which the standard
evaluation's masking checks flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._validation import check_batch, check_int, check_logits, check_real
from vulnscope.errors import InvalidTypeError
from vulnscope.models.seeded import build_seeded
from vulnscope.models.state import preserved_model_state
from vulnscope.models.training import train_classifier

__all__ = ["DistilledModels", "Tempered", "defensive_distillation", "soft_labels"]


class Tempered(nn.Module):
    """``model``'s logits divided by a temperature: the network trained "at temperature T".

    Args:
        model: the classifier, (N, ...) -> (N, C) logits.
        temperature: T > 0.

    Shape:
        input (N, ...); output (N, C) = model(input) / T.

    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.temperature = check_real(temperature, "temperature", minimum=0.0, exclusive=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, ...) -> (N, C): the logits divided by T."""
        logits: Tensor = self.model(x)
        return logits / self.temperature


@torch.no_grad()
def soft_labels(
    teacher: Callable[[Tensor], Tensor], x: Tensor, temperature: float, *, batch_size: int = 1024
) -> Tensor:
    """The teacher's probabilities at temperature T, ``softmax(teacher(x) / T)``.

    Computed in float64 from the logits, so that the student sees every digit of the
    soft labels; the teacher's mode flags are left as they were (evaluated in eval mode).

    Args:
        teacher: (N, ...) -> (N, C) logits.
        x: (N, ...) inputs.
        temperature: T > 0.
        batch_size: samples per forward pass.

    Returns:
        (N, C) float64 probability vectors.

    """
    temperature = check_real(temperature, "temperature", minimum=0.0, exclusive=True)
    batch_size = check_int(batch_size, "batch_size")
    x = check_batch(x)
    parts = []
    with preserved_model_state(teacher):
        if isinstance(teacher, nn.Module):
            teacher.eval()
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            logits = check_logits(teacher(chunk), chunk.shape[0], name="teacher")
            parts.append(torch.softmax(logits.double() / temperature, dim=1))
    return torch.cat(parts)


@dataclass(frozen=True)
class DistilledModels:
    """The two networks of defensive distillation, both in eval mode at temperature 1.

    Attributes:
        teacher: the network trained on the hard labels at temperature T.
        student: the distilled network, trained on the teacher's soft labels at T: the
            defended model.
        temperature: T.

    """

    teacher: nn.Module
    student: nn.Module
    temperature: float


def defensive_distillation(
    factory: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    temperature: float = 100.0,
    teacher: nn.Module | None = None,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> DistilledModels:
    """Train a teacher at temperature T (unless given), then distil a student from it.

    Args:
        factory: builds a fresh network of the architecture (called under ``seed`` for
            the teacher and ``seed + 1`` for the student).
        x: (N, ...) training inputs.
        y: (N,) int64 training labels.
        temperature: T (Papernot et al. use 100 on MNIST).
        teacher: an already trained teacher (it is then only used for its soft labels at
            T; a teacher trained at temperature 1 gives the "distillation of a standard
            network" variant).
        epochs: training epochs of each network.
        batch_size: samples per step.
        lr: Adam's learning rate.
        seed: seed of the initialisations and minibatch orders.

    Returns:
        :class:`DistilledModels`.

    """
    temperature = check_real(temperature, "temperature", minimum=0.0, exclusive=True)
    if teacher is None:
        teacher = build_seeded(factory, seed)
        train_classifier(
            Tempered(teacher, temperature),
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
        )
    elif not isinstance(teacher, nn.Module):
        raise InvalidTypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    targets = soft_labels(teacher, x, temperature)
    student = build_seeded(factory, seed + 1)
    train_classifier(
        Tempered(student, temperature),
        x,
        targets,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed + 1,
    )
    return DistilledModels(teacher.eval(), student.eval(), temperature)
