r"""Layer amplification: how much each block of a network can stretch a small perturbation.

The stability analogue of the RG analysis for an ordinary network (RG.md section 6): where
the RG reads a deep RBM layer by layer through stability matrices ``T^(k)``, here the
Jacobian ``J_k = ∂a_k / ∂a_{k-1}`` of each block's output with respect to its input plays
that part. Its top singular value ``σ_k`` is the most a block can stretch a perturbation
of its input; ``Π_k σ_k`` bounds the whole network's (Szegedy et al. 2014, section 4.3, did
this with the weights alone; here it is the local Jacobian at each input). How much a given
direction actually grows, ``||J_{1..k} v|| / ||v||``, compares the input Fisher's top
eigenvector with random directions of equal norm.

Blocks are observed with forward hooks, so any ``nn.Module`` works; each chosen block must
run once per forward pass, and its Jacobian is taken with respect to its first positional
input. ``σ_k`` comes from Lanczos on ``Jᵀ J`` (a Jacobian-vector and a vector-Jacobian
product a step), the Krylov refinement of power iteration; the growth along a direction
comes from one forward-mode pass through the whole network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor, nn

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_seed
from vulnscope.diagnostics._session import diagnostic_session
from vulnscope.diagnostics.fisher import fisher_eigenpairs
from vulnscope.diagnostics.lanczos import random_start_ritz_pairs
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

__all__ = ["LayerAmplification", "default_blocks", "layer_amplification"]


@dataclass(frozen=True)
class LayerAmplification:
    """Amplification by block, per sample.

    Attributes:
        names: the L blocks, in the order they ran.
        singular_values: (N, L) float64 top singular value of each block's Jacobian.
        cumulative: (N, L) running product of ``singular_values``: a bound on the growth of
            any perturbation up to that block.
        end_to_end: (N,) top singular value of the input-to-logits Jacobian, for comparison
            with ``cumulative[:, -1]``.
        growth: ``{"fisher": (N, L), "random": (N, L)}``: ``||J_{1..k} v|| / ||v||`` at each
            block's output, along the input Fisher's top eigenvector (or the direction
            given) and averaged over random directions.
        residuals: (N, L) Lanczos residual of each ``σ_k²``: small means converged.

    """

    names: list[str]
    singular_values: Tensor
    cumulative: Tensor
    end_to_end: Tensor
    growth: dict[str, Tensor]
    residuals: Tensor

    def medians(self) -> dict[str, Any]:
        """JSON-ready medians over the samples: per block, and end to end (inf as None)."""
        from vulnscope._statistics import finite_median, json_numbers

        return {
            "blocks": self.names,
            "singular_value_median": json_numbers(self.singular_values.median(0).values),
            "cumulative_median": json_numbers(self.cumulative.median(0).values),
            "end_to_end_median": finite_median(self.end_to_end),
            "growth_fisher_median": json_numbers(self.growth["fisher"].median(0).values),
            "growth_random_median": json_numbers(self.growth["random"].median(0).values),
        }


def default_blocks(model: nn.Module) -> list[str]:
    """The top-level children of ``model``: every block of a Sequential, or its named children."""
    names = [name for name, _ in model.named_children()]
    if not names:
        raise ModelError(
            f"{type(model).__name__} has no child modules to observe; pass modules=[...] "
            "naming submodules (see model.named_modules())"
        )
    return names


def _resolve_blocks(model: nn.Module, modules: Sequence[str] | None) -> dict[str, nn.Module]:
    available = dict(model.named_modules())
    names = default_blocks(model) if modules is None else list(modules)
    unknown = [name for name in names if name not in available or name == ""]
    if unknown:
        raise InvalidArgumentError(
            f"modules must name submodules of the model, got unknown {unknown[0]!r}; "
            f"available: {sorted(name for name in available if name)[:20]}"
        )
    return {name: available[name] for name in names}


class _Recorder:
    """Forward hooks that keep each block's input, output and forward-mode tangent."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        self.inputs: dict[str, Tensor] = {}
        self.tangents: dict[str, Tensor | None] = {}
        self.order: list[str] = []
        self.handles = []
        for name, module in blocks.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            if name in self.order:
                raise ModelError(
                    f"module {name!r} ran more than once in one forward pass; "
                    "choose modules that run once"
                )
            if not args or not isinstance(args[0], Tensor):
                raise ModelError(f"module {name!r} takes no tensor as its first input")
            self.order.append(name)
            # Cloned before the block runs: an in-place block would overwrite its input.
            self.inputs[name] = forward_ad.unpack_dual(args[0]).primal.detach().clone()

        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            if not isinstance(output, Tensor):
                raise ModelError(f"module {name!r} returns no tensor")
            tangent = forward_ad.unpack_dual(output).tangent
            self.tangents[name] = None if tangent is None else tangent.detach().clone()

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _tangent_norms(
    model: Callable[[Tensor], Tensor], x: Tensor, direction: Tensor, recorder: _Recorder
) -> Tensor:
    """``||J_{0..k} v||`` at each recorded block for a unit ``v`` per sample: (N, L)."""
    recorder.order.clear()
    with forward_ad.dual_level():
        model(forward_ad.make_dual(x, direction))
    norms = []
    for name in recorder.order:
        tangent = recorder.tangents[name]
        norms.append(
            torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            if tangent is None
            else tangent.flatten(1).double().norm(dim=1)
        )
    return torch.stack(norms, 1)


def _top_singular_value(
    module: Callable[[Tensor], Tensor], inputs: Tensor, steps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Top singular value of a block's per-sample Jacobian, and its Lanczos residual."""

    def block(values: Tensor) -> Tensor:
        return module(values.clone())  # an in-place block must not write into its input

    output, pullback = torch.func.vjp(block, inputs)[:2]
    n = inputs[0].numel()

    def gram(v: Tensor) -> Tensor:
        tangent = torch.func.jvp(block, (inputs,), (v.to(inputs.dtype).view_as(inputs),))[1]
        image: Tensor = pullback(tangent.to(output.dtype))[0]
        return image.flatten(1).double()

    pairs = random_start_ritz_pairs(
        gram, (inputs.shape[0], n), min(steps, n), generator=generator, device=inputs.device
    )
    return pairs.values[:, -1].clamp_min(0).sqrt(), pairs.residuals[:, -1]


def layer_amplification(
    model: nn.Module,
    x: Tensor,
    *,
    modules: Sequence[str] | None = None,
    direction: Tensor | None = None,
    random_directions: int = 8,
    steps: int = 20,
    seed: int | None = 0,
) -> LayerAmplification:
    """Top singular value of each block's Jacobian and the growth of perturbations by depth.

    Args:
        model: an ``nn.Module`` mapping (N, ...) to (N, C) logits, samples independent.
        x: (N, ...) inputs.
        modules: names of the blocks to observe (``model.named_modules()`` names); default
            the top-level children (:func:`default_blocks`).
        direction: (N, ...) perturbation whose growth to follow; default the top eigenvector
            of the input Fisher information.
        random_directions: random directions averaged for the comparison.
        steps: Lanczos steps per block (the top singular value is exact once ``steps``
            reaches the block's input size).
        seed: seed of the random directions and start vectors.

    Returns:
        :class:`LayerAmplification`.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module (its blocks are observed with hooks), "
            f"got {type(model).__name__}"
        )
    random_directions = check_int(random_directions, "random_directions")
    steps = check_int(steps, "steps")
    generator = make_generator(check_seed(seed))
    blocks = _resolve_blocks(model, modules)
    with diagnostic_session(model, x) as session:
        x = session.x
        if direction is None:
            direction = fisher_eigenpairs(model, x, 1, generator=generator).eigenvectors[:, 0]
        elif direction.shape != x.shape:
            raise InvalidArgumentError(
                f"direction must have the shape of x, {tuple(x.shape)}, "
                f"got {tuple(direction.shape)}"
            )
        unit = _unit(direction.detach().to(x.dtype))
        recorder = _Recorder(blocks)
        try:
            fisher_growth = _tangent_norms(model, x, unit, recorder)
            noise = [
                _unit(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
                for _ in range(random_directions)
            ]
            random_growth = torch.stack([_tangent_norms(model, x, v, recorder) for v in noise])
            order = list(recorder.order)
            inputs = dict(recorder.inputs)
        finally:
            recorder.close()
        missing = [name for name in blocks if name not in order]
        if missing:
            raise ModelError(f"module {missing[0]!r} did not run in the model's forward pass")
        sigma, residual = zip(
            *(_top_singular_value(blocks[name], inputs[name], steps, generator) for name in order),
            strict=True,
        )
        end_to_end, _ = _top_singular_value(model, x, steps, generator)
    singular_values = torch.stack(sigma, 1)
    return LayerAmplification(
        names=order,
        singular_values=singular_values,
        cumulative=singular_values.cumprod(1),
        end_to_end=end_to_end,
        growth={"fisher": fisher_growth, "random": random_growth.mean(0)},
        residuals=torch.stack(residual, 1),
    )


def _unit(v: Tensor) -> Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-30)
    unit: Tensor = v / norms.reshape(-1, *([1] * (v.ndim - 1)))
    return unit
