"""Reading a classifier's hidden layers, differentiably, for the detectors that use them.

Metzen et al.'s subnetwork reads an inner layer's output; Feinman et al.'s kernel density
reads the last hidden layer, and their dropout uncertainty perturbs it. A layer is named
as in ``model.named_modules()``; ``None`` names the last hidden layer: the input of the
model's last leaf module (for :class:`~vulnscope.models.DigitsCNN`, the 128 ReLU units
``relu3`` feeds to ``logits``). Hooks are removed on return, exceptions included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

__all__ = ["hidden_module", "hidden_output"]


def hidden_module(model: Any, layer: str | None) -> nn.Module:
    """The module whose output is ``layer`` (``None``: the last leaf, read at its input).

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module`` (its layers are read by hooks).
        InvalidArgumentError: no submodule is named ``layer``; the message lists them.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module (its hidden layers are read with hooks), "
            f"got {type(model).__name__}"
        )
    modules = {name: module for name, module in model.named_modules() if name}
    if layer is None:
        leaves = [module for module in modules.values() if not list(module.children())]
        if not leaves:
            raise InvalidArgumentError("layer: the model has no submodules; name the layer")
        last: nn.Module = leaves[-1]
        return last
    if layer not in modules:
        raise InvalidArgumentError(
            f"layer must name a submodule of the model, got {layer!r}; available: {list(modules)}"
        )
    named: nn.Module = modules[layer]
    return named


def hidden_output(
    model: Callable[[Tensor], Tensor], x: Tensor, layer: str | None
) -> tuple[Tensor, Tensor]:
    """The output of ``layer`` (or the last hidden layer) on ``x`` and the model's, with graphs.

    Returns:
        (N, ...) the layer's output and (N, K) the model's logits, from one forward pass.

    Raises:
        ModelError: the layer did not run exactly once in the forward pass.

    """
    module = hidden_module(model, layer)
    seen: list[Tensor] = []
    if layer is None:
        handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    else:
        handle = module.register_forward_hook(lambda _, __, output: seen.append(output))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(seen) != 1 or not isinstance(seen[0], Tensor):
        raise ModelError(f"layer {layer!r} must return one tensor once per forward pass")
    return seen[0], logits
