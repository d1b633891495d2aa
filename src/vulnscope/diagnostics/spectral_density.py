r"""The whole eigenvalue distribution of the input Hessian by stochastic Lanczos quadrature.

For a unit probe ``v`` and ``m`` Lanczos steps from it, the eigenvalues ``θ_j`` of the
tridiagonal ``T`` and the squared first components ``τ_j`` of its eigenvectors are the nodes
and weights of the Gauss quadrature of ``v``'s spectral measure ``Σ_i (v·u_i)² δ(λ - λ_i)``;
averaged over random probes this estimates the eigenvalue density
``φ(λ) = (1/n) Σ_i δ(λ - λ_i)`` (Lin, Saad and Yang 2016; Ubaru, Chen and Saad 2017;
Ghorbani, Krishnan and Xiao 2019 for network Hessians). From it come the smoothed density
and the eigenvalue profile (eigenvalue against its rank) of the Fawzi talk, slide 15.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_real, check_seed
from vulnscope.diagnostics._session import diagnostic_session
from vulnscope.diagnostics.hessian import loss_curvature
from vulnscope.diagnostics.hutchinson import rademacher
from vulnscope.diagnostics.lanczos import lanczos, ritz_pairs
from vulnscope.errors import InvalidArgumentError

__all__ = ["SpectralDensity", "input_hessian_spectrum", "stochastic_lanczos_quadrature"]


@dataclass(frozen=True)
class SpectralDensity:
    """Quadrature nodes and weights of the eigenvalue distribution, per sample.

    Attributes:
        nodes: (N, P, m) float64 Ritz values of each of P probes.
        weights: (N, P, m) float64 quadrature weights; each probe's sum to 1.
        dimension: n, the operator's size (the number of eigenvalues).

    """

    nodes: Tensor
    weights: Tensor
    dimension: int

    def density(self, grid: Tensor, *, width: float | None = None) -> Tensor:
        """The density smoothed with a Gaussian of standard deviation ``width``.

        Args:
            grid: (G,) eigenvalues at which to evaluate it.
            width: kernel width (default: 1% of the range of the nodes).

        Returns:
            (N, G) density, integrating to 1 over the real line.

        """
        if width is None:
            span = float(self.nodes.max() - self.nodes.min())
            width = max(0.01 * span, 1e-12)
        width = check_real(width, "width", minimum=0.0, exclusive=True)
        grid = grid.double().to(self.nodes.device)
        offsets = (grid[None, None, None, :] - self.nodes[..., None]) / width
        kernel = torch.exp(-0.5 * offsets**2) / (width * math.sqrt(2 * math.pi))
        return (self.weights[..., None] * kernel).sum(2).mean(1)

    def profile(self) -> Tensor:
        """Eigenvalues against their rank: (N, n), descending.

        Entry ``i`` is the ``(i + 1/2)/n`` upper quantile of the estimated distribution,
        the shape of the exact sorted spectrum that the talk plots.
        """
        batch = self.nodes.shape[0]
        nodes = self.nodes.reshape(batch, -1)
        weights = self.weights.reshape(batch, -1) / self.nodes.shape[1]
        order = nodes.argsort(dim=1, descending=True)
        nodes, weights = nodes.gather(1, order), weights.gather(1, order)
        cumulative = weights.cumsum(1) * self.dimension  # eigenvalues at or above each node
        ranks = torch.arange(self.dimension, dtype=torch.float64, device=nodes.device) + 0.5
        index = torch.searchsorted(cumulative, ranks.expand(batch, -1).contiguous())
        return nodes.gather(1, index.clamp_max(nodes.shape[1] - 1))


def stochastic_lanczos_quadrature(
    operator: Callable[[Tensor], Tensor],
    shape: tuple[int, int],
    *,
    steps: int,
    probes: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> SpectralDensity:
    """SLQ on N symmetric operators: ``probes`` Lanczos runs of ``steps`` from Rademacher probes.

    Args:
        operator: (N, n) float64 -> (N, n), symmetric per sample.
        shape: ``(N, n)``.
        steps: Lanczos steps per probe, <= n.
        probes: number of probes.
        generator: a CPU generator for the probes.
        device: where the probes live.

    Returns:
        :class:`SpectralDensity`.

    """
    nodes, weights = [], []
    for _ in range(check_int(probes, "probes")):
        start = rademacher(shape, generator, device)
        pairs = ritz_pairs(lanczos(operator, start, steps, generator=generator))
        nodes.append(pairs.values)
        weights.append(pairs.weights)
    return SpectralDensity(torch.stack(nodes, 1), torch.stack(weights, 1), shape[1])


def input_hessian_spectrum(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 30,
    probes: int = 8,
    seed: int | None = 0,
) -> SpectralDensity:
    """The eigenvalue distribution of the input Hessian of the cross-entropy, by SLQ.

    Costs ``steps * probes`` Hessian-vector products per sample.

    Args:
        model: (N, ...) -> (N, C) logits, samples independent.
        x: (N, ...) inputs.
        y: (N,) labels.
        steps: Lanczos steps per probe, 1 <= steps <= n.
        probes: random probes.
        seed: seed of the probes.

    Returns:
        :class:`SpectralDensity` (``density`` for the smoothed curve, ``profile`` for the
        eigenvalue-against-rank curve).

    """
    steps = check_int(steps, "steps")
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x, y) as session:
        n = session.x[0].numel()
        if steps > n:
            raise InvalidArgumentError(f"steps must be at most n = {n}, got {steps}")
        curvature = loss_curvature(session.model, session.x, cast(Tensor, session.y))
        return stochastic_lanczos_quadrature(
            curvature.hvp,
            (x.shape[0], n),
            steps=steps,
            probes=probes,
            generator=generator,
            device=x.device,
        )
