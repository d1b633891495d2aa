r"""Manifold Mixup: training on interpolated hidden states with interpolated labels.

Verma, Lamb, Beckham, Najafi, Mitliagkas, Lopez-Paz and Bengio (2019), "Manifold Mixup:
better representations by interpolating hidden states". For each minibatch, draw
``λ ~ Beta(α, α)``, a permutation ``π`` of the batch and a layer ``k`` uniformly among the
eligible ones; run the network up to layer ``k``, replace its hidden state ``h`` by
``λ h + (1 - λ) h[π]``, finish the forward pass to logits ``z``, and minimise

.. math:: \lambda\, \mathrm{CE}(z, y) + (1 - \lambda)\, \mathrm{CE}(z, y[\pi]).

``k = 0`` (the input) is input mixup (Zhang et al. 2018). Training on such points
flattens the class representations and keeps the classifier from being overconfident
between classes, which the paper finds also makes single-step attacks less effective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import (
    check_batch,
    check_bool,
    check_int,
    check_labels,
    check_logits,
    check_real,
    describe,
)
from vulnscope.defences.dropout import ACTIVATION_TYPES
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

__all__ = ["ManifoldMixup", "MixupDraw", "beta_quantile"]


@dataclass(frozen=True)
class MixupDraw:
    """The random choices of one Manifold Mixup minibatch.

    Attributes:
        lam: the mixing weight ``λ``, in [0, 1].
        permutation: (B,) int64, the partner ``π(i)`` of each sample.
        layer: the name (in ``model.named_modules()``) of the module whose output is
            mixed, or ``None`` for the input.

    """

    lam: float
    permutation: Tensor
    layer: str | None


class ManifoldMixup:
    r"""Manifold Mixup as a training :data:`~vulnscope.models.training.Objective`.

    ``ManifoldMixup(alpha=2.0)(model, x, y, generator)`` returns the mixed cross-entropy
    of the module docstring; pass it as ``train_classifier(..., objective=...)``.

    The eligible layers are the input (when ``mix_input``) and the outputs of the modules
    named in ``layers``; by default, of every activation module
    (:data:`~vulnscope.defences.dropout.ACTIVATION_TYPES`), the last hidden layer
    included. There, mixing the hidden state mixes the logits, ``z = λ z_i + (1-λ) z_j``,
    which still penalises overconfident interpolations. The paper's ResNets mixed only at
    the input and after their first two of four stages; name the layers to follow it.
    Hidden states must have the batch first. A module called several times in one
    forward pass is mixed at its first call.

    Each call draws, from ``generator`` and in this order: ``u = torch.rand((),
    dtype=float64)`` giving ``λ = F⁻¹(u)`` (:func:`beta_quantile`); the layer, by
    ``torch.randint``; the permutation, by ``torch.randperm``. :meth:`draw` makes the same
    draws, :meth:`loss` evaluates a given draw.

    Args:
        alpha: the Beta(α, α) parameter, > 0 (the paper uses 2.0; small ``α`` puts ``λ``
            near 0 or 1, i.e. little mixing).
        layers: names of the modules (from ``model.named_modules()``) whose outputs may
            be mixed, in any order; ``None`` for every activation module.
        mix_input: also mix at the input.

    Shape:
        x: (B, ...) floating; y: (B,) integer class labels; returns a scalar.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> mixup = ManifoldMixup(alpha=2.0)
        >>> mixup.eligible_layers(model)
        [None, '1']
        >>> generator = torch.Generator().manual_seed(0)
        >>> loss = mixup(model, torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1]), generator)
        >>> loss.shape
        torch.Size([])

    """

    def __init__(
        self, *, alpha: float = 2.0, layers: Sequence[str] | None = None, mix_input: bool = True
    ) -> None:
        self.alpha = check_real(alpha, "alpha", minimum=0.0, exclusive=True)
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, Sequence):
                raise InvalidTypeError(
                    f"layers must be a sequence of module names or None, got {describe(layers)}"
                )
            for index, name in enumerate(layers):
                if not isinstance(name, str):
                    raise InvalidTypeError(
                        f"layers[{index}] must be a module name (str), got {describe(name)}"
                    )
            layers = tuple(layers)
        self.layers = layers
        self.mix_input = check_bool(mix_input, "mix_input")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, layers={self.layers}, "
            f"mix_input={self.mix_input})"
        )

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The mixed loss of one minibatch with fresh draws from ``generator``."""
        x = check_batch(x)
        return self.loss(model, x, y, self.draw(model, x.shape[0], generator))

    def eligible_layers(self, model: nn.Module) -> list[str | None]:
        """The layers a minibatch may be mixed at: ``None`` (the input) first, then names.

        Raises:
            InvalidArgumentError: a name in ``layers`` is not a module of ``model``, or
                there is no layer to mix at.

        """
        modules = dict(_check_model(model).named_modules())
        if self.layers is None:
            names = [
                name for name, module in modules.items() if isinstance(module, ACTIVATION_TYPES)
            ]
        else:
            for name in self.layers:
                if name not in modules:
                    known = ", ".join(repr(known) for known in list(modules)[1:21])
                    raise InvalidArgumentError(
                        f"layers names {name!r}, which is not a module of "
                        f"{type(model).__name__}; its modules include {known}"
                    )
            names = list(self.layers)
        candidates: list[str | None] = [None] if self.mix_input else []
        candidates.extend(names)
        if not candidates:
            raise InvalidArgumentError(
                f"ManifoldMixup has no layer to mix at in {type(model).__name__}: "
                f"mix_input is False and layers={self.layers} names no module "
                "(by default the activation modules)"
            )
        return candidates

    def draw(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> MixupDraw:
        """The random choices of one minibatch of ``batch_size`` samples (see the class)."""
        candidates = self.eligible_layers(model)
        batch_size = check_int(batch_size, "batch_size")
        if not isinstance(generator, torch.Generator):
            raise InvalidTypeError(
                f"generator must be a torch.Generator, got {describe(generator)}"
            )
        device = generator.device
        uniform = torch.rand((), generator=generator, dtype=torch.float64, device=device)
        lam = beta_quantile(float(uniform), self.alpha)
        index = torch.randint(len(candidates), (), generator=generator, device=device)
        permutation = torch.randperm(batch_size, generator=generator, device=device)
        return MixupDraw(lam=lam, permutation=permutation, layer=candidates[int(index)])

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, draw: MixupDraw) -> Tensor:
        """The mixed cross-entropy of ``(x, y)`` for a given draw: deterministic.

        Args:
            model: the classifier, (B, ...) to logits (B, C).
            x: (B, ...) floating inputs.
            y: (B,) integer class labels.
            draw: the choices, e.g. from :meth:`draw`.

        Returns:
            ``λ CE(z, y) + (1 - λ) CE(z, y[π])``, a scalar (mean over the batch).

        """
        model = _check_model(model)
        x = check_batch(x)
        n = x.shape[0]
        y = check_labels(y, n=n, device=x.device)
        if not isinstance(draw, MixupDraw):
            raise InvalidTypeError(f"draw must be a MixupDraw, got {describe(draw)}")
        permutation = draw.permutation.to(x.device)
        if permutation.shape != (n,):
            raise InvalidArgumentError(
                f"draw.permutation must have shape ({n},) to match x, "
                f"got {tuple(permutation.shape)}"
            )
        lam = draw.lam
        if draw.layer is None:
            logits = model(lam * x + (1.0 - lam) * x[permutation])
        else:
            logits = _forward_mixed(model, x, draw.layer, lam, permutation)
        logits = check_logits(logits, n)
        return lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(
            logits, y[permutation]
        )


def beta_quantile(u: float, alpha: float) -> float:
    """The ``u``-quantile of Beta(α, α): ``F⁻¹(u)``, with ``u`` in [0, 1].

    Inverse-transform sampling: for ``U ~ U[0, 1)``, ``F⁻¹(U) ~ Beta(α, α)`` exactly, so
    one uniform from a seeded :class:`torch.Generator` gives a reproducible draw
    (``torch.distributions.Beta`` takes no generator). The inverse of the regularised
    incomplete beta function is :func:`scipy.special.betaincinv`, accurate to about
    1e-15.

    Example:
        >>> beta_quantile(0.5, 2.0)
        0.5
        >>> round(beta_quantile(0.25, 1.0), 12)
        0.25

    """
    from scipy.special import betaincinv  # imported on first use: scipy loads slowly

    u = check_real(u, "u", minimum=0.0)
    if u > 1.0:
        raise InvalidArgumentError(f"u must be in [0, 1], got {u}")
    alpha = check_real(alpha, "alpha", minimum=0.0, exclusive=True)
    return min(max(float(betaincinv(alpha, alpha, u)), 0.0), 1.0)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    return model


def _forward_mixed(model: nn.Module, x: Tensor, layer: str, lam: float, permutation: Tensor) -> Any:
    """``model(x)`` with the output of module ``layer`` mixed at its first call."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InvalidArgumentError(
            f"draw.layer names {layer!r}, which is not a module of {type(model).__name__}"
        )
    mixed = False

    def mix(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        nonlocal mixed
        if mixed:
            return None
        if not isinstance(output, Tensor) or output.ndim < 1 or output.shape[0] != x.shape[0]:
            raise ModelError(
                f"Manifold Mixup mixes tensors with the batch first: the output of layer "
                f"{layer!r} is {describe(output)}, for a batch of {x.shape[0]}"
            )
        mixed = True
        return lam * output + (1.0 - lam) * output[permutation]

    handle = modules[layer].register_forward_hook(mix)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not mixed:
        raise ModelError(f"layer {layer!r} of {type(model).__name__} is not called by its forward")
    return logits
