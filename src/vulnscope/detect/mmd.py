r"""Grosse et al.'s maximum mean discrepancy test: is a *sample* of inputs clean.

Grosse, Manoharan, Papernot, Backes and McDaniel (2017), "On the (statistical) detection
of adversarial examples", section 3: a two-sample test between a sample of inputs and
clean data, with Gretton et al.'s (2012) kernel maximum mean discrepancy

.. math:: \mathrm{MMD}^2_b(X, Y) = \frac{1}{n^2}\sum_{i,j} k(x_i, x_j)
    + \frac{1}{m^2}\sum_{i,j} k(y_i, y_j) - \frac{2}{nm}\sum_{i,j} k(x_i, y_j)

(the biased estimate, Gaussian kernel :math:`k(a, b) = \exp(-\|a - b\|^2 / 2\sigma^2)`)
and a permutation test for its p-value. It decides about a set, never a point: its power
grows with the sample (:func:`mmd_power`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from vulnscope._validation import check_batch, check_fraction, check_int, check_real, check_seed
from vulnscope.detect.base import Detector
from vulnscope.errors import InvalidArgumentError

__all__ = ["MMDTest", "gaussian_kernel", "median_bandwidth", "mmd_power", "mmd_test"]

Model = Callable[[Tensor], Tensor]


def gaussian_kernel(a: Tensor, b: Tensor, bandwidth: float | Tensor) -> Tensor:
    r"""(N, M) Gaussian kernel :math:`\exp(-\|a_i - b_j\|^2 / 2\sigma^2)` of two row sets."""
    distances = torch.cdist(a.flatten(1), b.flatten(1)).square()
    return torch.exp(-distances / (2.0 * bandwidth**2))


def median_bandwidth(z: Tensor) -> float:
    r"""The median heuristic: :math:`\sigma^2` = half the median squared distance of two rows."""
    flat = z.flatten(1).double()
    distances = torch.cdist(flat, flat).square()
    upper = distances[torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)]
    median = float(upper.median()) if upper.numel() else 0.0
    if median <= 0.0:
        raise InvalidArgumentError("the median heuristic needs at least two distinct inputs")
    return math.sqrt(median / 2.0)


def mmd_test(
    x: Tensor,
    y: Tensor,
    *,
    bandwidth: float | None = None,
    permutations: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Two-sample test of ``x`` against ``y`` by the biased MMD² and permutations.

    Permutation ``b`` (of ``permutations``) is the ``b``-th ``torch.randperm(n + m)``
    drawn from ``torch.Generator().manual_seed(seed)``; it splits the pooled rows
    ``[x; y]`` into its first ``n`` and its last ``m``.

    Args:
        x: (n, ...) sample (the clean data).
        y: (m, ...) sample (the inputs under test), same feature shape.
        bandwidth: the kernel's sigma; ``None`` for :func:`median_bandwidth` of the pool
            (the same for every permutation).
        permutations: number of random splits.
        seed: seed of the permutations.

    Returns:
        the statistic :math:`\mathrm{MMD}^2_b(x, y)` and the p-value
        ``(1 + #{b: MMD²_b ≥ statistic}) / (1 + permutations)``.

    """
    x, y = check_batch(x, "x"), check_batch(y, "y")
    if x.shape[1:] != y.shape[1:]:
        raise InvalidArgumentError(
            f"y must have x's feature shape {tuple(x.shape[1:])}, got {tuple(y.shape[1:])}"
        )
    permutations = check_int(permutations, "permutations")
    seed = check_seed(seed) or 0
    pool = torch.cat([x, y]).flatten(1).double()
    sigma = median_bandwidth(pool) if bandwidth is None else check_real(bandwidth, "bandwidth")
    kernel = gaussian_kernel(pool, pool, sigma)
    n, total = x.shape[0], pool.shape[0]
    generator = torch.Generator().manual_seed(seed)
    orders = torch.stack([torch.randperm(total, generator=generator) for _ in range(permutations)])
    # MMD²_b = w^T K w with w = 1/n on the first sample's rows, -1/m on the other's
    weights = torch.full((permutations + 1, total), -1.0 / (total - n), dtype=torch.float64)
    weights[0, :n] = 1.0 / n
    weights[1:].scatter_(1, orders[:, :n], 1.0 / n)
    statistics = ((weights @ kernel) * weights).sum(1)
    statistic = float(statistics[0])
    exceed = int((statistics[1:] >= statistics[0] - 1e-12).sum())
    return statistic, (1 + exceed) / (1 + permutations)


def mmd_power(
    clean: Tensor,
    adversarial: Tensor,
    *,
    sizes: Sequence[int],
    trials: int = 20,
    permutations: int = 200,
    alpha: float = 0.05,
    bandwidth: float | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """The test's power: the share of trials in which it rejects at level ``alpha``.

    Each trial draws ``size`` rows of ``clean`` and ``size`` rows of ``adversarial``
    (without replacement, independently) and runs :func:`mmd_test`. With two disjoint
    clean sets in place of ``adversarial`` it measures the false-rejection rate instead.

    Returns:
        ``{size: power}`` for each size.

    """
    trials = check_int(trials, "trials")
    alpha = check_fraction(alpha, "alpha")
    seed = check_seed(seed) or 0
    generator = torch.Generator().manual_seed(seed)
    power = {}
    for size in sizes:
        size = check_int(size, "sizes[...]", minimum=2)
        if size > min(len(clean), len(adversarial)):
            raise InvalidArgumentError(
                f"sizes: a sample of {size} needs at least {size} clean and adversarial "
                f"inputs, got {len(clean)} and {len(adversarial)}"
            )
        rejected = 0
        for _ in range(trials):
            x = clean[torch.randperm(len(clean), generator=generator)[:size]]
            y = adversarial[torch.randperm(len(adversarial), generator=generator)[:size]]
            test_seed = int(torch.randint(2**62, (1,), generator=generator))
            _, p_value = mmd_test(
                x, y, bandwidth=bandwidth, permutations=permutations, seed=test_seed
            )
            rejected += p_value <= alpha
        power[size] = rejected / trials
    return power


class MMDTest(Detector):
    r"""Grosse et al.'s MMD test as a detector, with a per-point score.

    Fitting keeps ``reference`` clean inputs (drawn from the fit's generator) and the
    kernel's bandwidth. :meth:`test` runs the set-level test of a sample against them.
    A point :math:`z` of a scored batch :math:`Y` (size :math:`m`) against the reference
    :math:`X` gets its share of the statistic,

    .. math:: s(z) = \frac{1}{m}\sum_{y \in Y} k(z, y) - \frac{2}{n}\sum_{x \in X} k(z, x)
        + \frac{1}{n^2}\sum_{x, x' \in X} k(x, x'),

    so that the batch's mean score is exactly :math:`\mathrm{MMD}^2_b(X, Y)`: a point is
    suspicious when it lies nearer the batch than the clean data. Scores depend on the
    batch they are computed in (score a batch that is all clean or all suspect).
    Differentiable.

    Args:
        reference: clean inputs kept for the test.
        bandwidth: the Gaussian kernel's sigma; ``None`` for ``scale`` times the median
            heuristic on the reference.
        scale: factor on the median heuristic (of 0.25, 0.5, 1 and 2, 0.5 separated
            PGD examples of the digits CNN best, point by point and as samples).
        permutations: permutations of :meth:`test`.

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,).

    """

    name = "mmd"
    paper = "Grosse et al. (2017), On the (statistical) detection of adversarial examples"
    set_level = True
    reference_: Tensor
    bandwidth_: Tensor
    baseline_: Tensor

    def __init__(
        self,
        *,
        reference: int = 200,
        bandwidth: float | None = None,
        scale: float = 0.5,
        permutations: int = 1000,
    ) -> None:
        super().__init__()
        self.reference = check_int(reference, "reference", minimum=2)
        self.bandwidth = (
            None
            if bandwidth is None
            else check_real(bandwidth, "bandwidth", minimum=0.0, exclusive=True)
        )
        self.scale = check_real(scale, "scale", minimum=0.0, exclusive=True)
        self.permutations = check_int(permutations, "permutations")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The reference inputs, the bandwidth and the reference's mean kernel."""
        self.register_buffer("reference_", torch.zeros(self.reference, *input_shape))
        self.register_buffer("bandwidth_", torch.zeros(()))
        self.register_buffer("baseline_", torch.zeros(()))

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Keep ``reference`` clean inputs drawn at random, and the bandwidth."""
        if x.shape[0] < self.reference:
            raise InvalidArgumentError(
                f"inputs: the MMD test keeps {self.reference} clean inputs, got {x.shape[0]}"
            )
        chosen = torch.randperm(x.shape[0], generator=generator, device=x.device)
        self.reference_.copy_(x[chosen[: self.reference]])
        sigma = self.bandwidth
        if sigma is None:
            sigma = self.scale * median_bandwidth(self.reference_)
        self.bandwidth_.fill_(sigma)
        self.baseline_.copy_(gaussian_kernel(self.reference_, self.reference_, sigma).mean())

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """Each point's share of the batch's MMD² against the reference."""
        to_batch = gaussian_kernel(x, x, self.bandwidth_).mean(1)
        to_clean = gaussian_kernel(x, self.reference_, self.bandwidth_).mean(1)
        return to_batch - 2.0 * to_clean + self.baseline_

    def test(self, inputs: Tensor, *, seed: int = 0) -> tuple[float, float]:
        """:func:`mmd_test` of the reference against ``inputs``: (statistic, p-value)."""
        x = self._checked(inputs)
        return mmd_test(
            self.reference_,
            x.detach(),
            bandwidth=float(self.bandwidth_),
            permutations=self.permutations,
            seed=seed,
        )
