"""Tiny random networks of every layer type certify bounds, and points of their input sets.

Shared by the certify tests (imported by name: pytest puts this folder on the path, as it
does ``tests/`` for ``helpers``). Inputs are (N, 2, 4, 4) in [0, 1]; outputs 3 logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope.models import ChannelsLastConv2d, Normalized
from vulnscope.models.pooling import WindowMaxPool2d

IN_SHAPE = (2, 4, 4)
CLASSES = 3

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

POOLS: dict[str, Callable[[], nn.Module]] = {
    "max": lambda: nn.MaxPool2d(2),
    "window_max": lambda: WindowMaxPool2d(2),
    "avg": lambda: nn.AvgPool2d(2),
    # overlapping windows with padding, then a plain halving
    "overlapping_max": lambda: nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.AvgPool2d(2)),
}


class ResidualBlock(nn.Module):
    """``x + conv(act(conv(x)))`` with a functional ReLU inside: certify reads it with fx."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = ACTIVATIONS[activation]()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(functional.relu(self.act(self.conv1(x))))


class FunctionalMLP(nn.Module):
    """An MLP written with ``torch.flatten``, ``functional.leaky_relu`` and ``torch.tanh``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        hidden = functional.leaky_relu(self.fc1(torch.flatten(x, 1)), 0.2)
        return self.fc3(torch.tanh(self.fc2(hidden)) * 2.0 - 0.5)


@dataclass(frozen=True)
class Spec:
    """Which tiny network to build (hypothesis draws these)."""

    kind: str  # "mlp", "cnn" or "functional"
    activation: str
    pool: str
    channels_last: bool
    residual: bool
    batch_norm: bool
    normalized: bool
    seed: int
    width: int = 8


def _randomise_batch_norm(module: nn.Module, generator: torch.Generator) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            size = layer.num_features
            with torch.no_grad():
                layer.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                layer.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                layer.weight.copy_(torch.rand(size, generator=generator) * 3 - 1.5)
                layer.bias.copy_(torch.rand(size, generator=generator) * 0.6 - 0.3)


def build(spec: Spec, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The network ``spec`` describes, in eval mode."""
    act = ACTIVATIONS[spec.activation]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        layers: list[nn.Module]
        if spec.kind == "functional":
            layers = [FunctionalMLP(spec.width)]
        elif spec.kind == "mlp":
            layers = [nn.Flatten(), nn.Linear(32, spec.width)]
            layers += [nn.BatchNorm1d(spec.width)] if spec.batch_norm else []
            layers += [act(), nn.Linear(spec.width, spec.width), act()]
            layers += [nn.Linear(spec.width, CLASSES)]
        else:
            conv = ChannelsLastConv2d if spec.channels_last else nn.Conv2d
            layers = [conv(2, 3, 3, padding=1)]
            layers += [nn.BatchNorm2d(3)] if spec.batch_norm else []
            layers += [act()]
            layers += [ResidualBlock(3, spec.activation)] if spec.residual else []
            layers += [POOLS[spec.pool](), nn.Flatten(), nn.Linear(12, spec.width), act()]
            layers += [nn.Linear(spec.width, CLASSES)]
        model: nn.Module = nn.Sequential(*layers)
    _randomise_batch_norm(model, torch.Generator().manual_seed(spec.seed))
    if spec.normalized:
        model = Normalized(model, mean=[0.4, 0.5], std=[0.3, 0.2])
    return model.to(dtype).eval()


def points(seed: int, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` inputs in [0, 1]; the first is binary, so its ball meets the box at every pixel."""
    x = torch.rand((n, *IN_SHAPE), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[0] = (x[0] > 0.5).to(dtype)
    return x


def sample_set(
    x: Tensor, *, norm: str, eps: float, count: int, generator: torch.Generator
) -> Tensor:
    """``count`` random points of each ball ∩ [0, 1] box: (count, N, *in).

    L∞: half at corners of the ball (where linear bounds are tight), half uniform. L2: half
    on the sphere, half inside. Clipping to the box moves a point towards the centre in
    every coordinate, so it stays inside the ball.
    """
    shape = (count, *x.shape)
    half = count // 2
    if norm == "linf":
        corners = torch.randint(0, 2, shape, generator=generator).to(x.dtype) * 2 - 1
        uniform = torch.rand(shape, generator=generator, dtype=x.dtype) * 2 - 1
        delta = torch.cat([corners[:half], uniform[half:]]) * eps
    else:
        direction = torch.randn(shape, generator=generator, dtype=x.dtype)
        direction = direction / direction.flatten(2).norm(dim=2).view(*shape[:2], 1, 1, 1)
        radius = torch.rand((count, x.shape[0], 1, 1, 1), generator=generator, dtype=x.dtype)
        radius[:half] = 1.0
        delta = direction * radius * eps
    return (x + delta).clamp(0.0, 1.0)


def margins_at(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """``logit[label] - logit[j]`` at ``x`` (N, *in): (N, C)."""
    with torch.no_grad():
        logits = model(x)
    return logits.gather(1, labels[:, None]) - logits
