r"""Hutchinson's stochastic estimates of a trace and a squared Frobenius norm.

For a symmetric operator ``A`` (n x n) and probes ``z`` with ``E[z zᵀ] = I``,

.. math:: \operatorname{tr} A = E[z^\top A z], \qquad \|A\|_F^2 = E[\|A z\|^2]

(Hutchinson 1990). With Rademacher probes the trace estimate has the smallest variance among
i.i.d. probes, ``2 Σ_{i≠j} A_ij²`` per probe. Both come from the same products, and their
standard errors from the spread over probes. Moosavi-Dezfooli et al. (2019, CURE) use the
second to regularise the curvature of the loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._validation import check_int

__all__ = ["HutchinsonEstimate", "hutchinson", "rademacher"]


@dataclass(frozen=True)
class HutchinsonEstimate:
    """Estimates of ``tr A`` and ``||A||_F²`` per sample, with standard errors.

    Attributes:
        trace, trace_stderr: (N,) float64.
        frobenius_squared, frobenius_squared_stderr: (N,) float64.
        probes: number of probe vectors.

    """

    trace: Tensor
    trace_stderr: Tensor
    frobenius_squared: Tensor
    frobenius_squared_stderr: Tensor
    probes: int

    @property
    def frobenius(self) -> Tensor:
        """(N,) ``||A||_F``, the square root of the estimate."""
        return self.frobenius_squared.clamp_min(0).sqrt()

    @property
    def frobenius_stderr(self) -> Tensor:
        """(N,) standard error of ``frobenius`` by the delta method."""
        return self.frobenius_squared_stderr / (2 * self.frobenius).clamp_min(1e-300)


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """Independent ±1 entries (float64), drawn on the CPU so that the generator decides."""
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.float64)
    return (2 * signs - 1).to(device)


def hutchinson(
    operator: Callable[[Tensor], Tensor],
    shape: tuple[int, int],
    *,
    probes: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> HutchinsonEstimate:
    """Estimate ``tr A`` and ``||A||_F²`` of N operators from ``probes`` Rademacher probes.

    Args:
        operator: (N, n) float64 -> (N, n), symmetric per sample.
        shape: ``(N, n)``.
        probes: number of probes, >= 2 (the standard error needs two).
        generator: source of the probes.
        device: where the probes live.

    Returns:
        :class:`HutchinsonEstimate`.

    """
    probes = check_int(probes, "probes", minimum=2)
    quadratic, squared = [], []
    for _ in range(probes):
        z = rademacher(shape, generator, device)
        image = operator(z).double()
        quadratic.append((z * image).sum(1))
        squared.append((image**2).sum(1))
    q, s = torch.stack(quadratic), torch.stack(squared)  # (probes, N)
    root = math.sqrt(probes)
    return HutchinsonEstimate(
        trace=q.mean(0),
        trace_stderr=q.std(0) / root,
        frobenius_squared=s.mean(0),
        frobenius_squared_stderr=s.std(0) / root,
        probes=probes,
    )
