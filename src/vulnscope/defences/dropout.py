r"""Dropout on every activation of a model, switched on for the length of a ``with`` block.

Srivastava, Hinton, Krizhevsky, Sutskever and Salakhutdinov (2014), "Dropout: a simple
way to prevent neural networks from overfitting". While :func:`activation_dropout` is
active, the output ``h`` of every activation module in training mode is replaced by

.. math:: \tilde h = \frac{m \odot h}{1 - p}, \qquad m_i = [u_i \ge p],\ u_i \sim U[0, 1),

"inverted" dropout: each unit is kept with probability ``1 - p`` and the kept ones are
scaled so that ``E[h̃] = h``, and evaluation needs no rescaling. It works through forward
hooks, so any model gets dropout without a change to its architecture, and once the block
exits (or in eval mode) the model is exactly the function it was: its state dict and
TorchScript form hold no trace of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from vulnscope._validation import check_real, describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, VulnscopeWarning

__all__ = ["ACTIVATION_TYPES", "activation_dropout"]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
)
"""The element-wise activation modules (and their subclasses) whose outputs count as a
model's hidden states, for dropout here and for :class:`~vulnscope.defences.mixup.ManifoldMixup`."""


@contextmanager
def activation_dropout(
    model: nn.Module, p: float, generator: torch.Generator
) -> Iterator[nn.Module]:
    """Apply inverted dropout to the output of every activation module of ``model``.

    Inside the block, each call of a module that is an instance of
    :data:`ACTIVATION_TYPES` and in training mode draws
    ``u = torch.rand(h.shape, generator=generator, dtype=h.dtype)`` (on the generator's
    device) and returns ``where(u >= p, h / (1 - p), 0)``: one draw per call, in the
    order of the forward pass, so a run is reproducible from the generator's seed. A
    module called several times per forward pass gets a fresh mask each time. Modules in
    eval mode are untouched, and the hooks are removed on exit, exceptions included.

    Args:
        model: the network (not modified: only hooks are attached).
        p: the probability of dropping a unit, in [0, 1); 0 leaves the model unchanged.
        generator: the source of the masks, ideally on the model's device.

    Yields:
        ``model``.

    Warns:
        VulnscopeWarning: ``model`` has no activation module, so nothing is dropped.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> generator = torch.Generator().manual_seed(0)
        >>> with activation_dropout(model, 0.5, generator):
        ...     train_output = model(torch.ones(3, 4))
        >>> [len(module._forward_hooks) for module in model]
        [0, 0, 0]

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    p = check_real(p, "p", minimum=0.0)
    if p >= 1.0:
        raise InvalidArgumentError(f"p must be in [0, 1), got {p}")
    if not isinstance(generator, torch.Generator):
        raise InvalidTypeError(f"generator must be a torch.Generator, got {describe(generator)}")
    targets = [module for module in model.modules() if isinstance(module, ACTIVATION_TYPES)]
    if not targets:
        names = ", ".join(kind.__name__ for kind in ACTIVATION_TYPES)
        warnings.warn(
            f"activation_dropout found no activation module ({names}) in "
            f"{type(model).__name__}: nothing is dropped",
            VulnscopeWarning,
            stacklevel=3,
        )

    def drop(module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        if p == 0.0 or not module.training or not isinstance(output, Tensor):
            return None
        dtype = output.dtype if output.is_floating_point() else torch.get_default_dtype()
        draws = torch.rand(output.shape, generator=generator, dtype=dtype, device=generator.device)
        keep = draws.to(output.device) >= p
        return torch.where(keep, output / (1.0 - p), torch.zeros_like(output))

    handles: list[RemovableHandle] = []
    try:
        for module in targets:
            handles.append(module.register_forward_hook(drop))
        yield model
    finally:
        for handle in handles:
            handle.remove()
