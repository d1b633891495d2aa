r"""Curvature of the loss in input space: the input Hessian's top eigenpairs and norms.

``H(x) = ∂²ℓ(f(x), y) / ∂x²`` with ``ℓ`` the cross-entropy. Its eigenvalues are the
curvatures of the loss around ``x``; adversarial training flattens them (Moosavi-Dezfooli,
Fawzi, Uesato and Frossard 2019, "Robustness via curvature regularization, and vice versa";
the Fawzi talk, slide 15). Nothing here forms H: Hessian-vector products come from double
backward through one retained graph, and Lanczos (:mod:`vulnscope.diagnostics.lanczos`)
turns m of them into the extreme eigenpairs.

For a network that is piecewise linear in its input (ReLU, max pooling, batch norm in eval
mode) the second derivative of every layer vanishes almost everywhere and H equals the
input Fisher information ``Jᵀ (diag p - p pᵀ) J``: positive semi-definite, rank at most C - 1,
and independent of the label. A smooth network (tanh, softplus, GELU) adds the label's
curvature term and can have negative eigenvalues.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_int, check_logits, check_seed
from vulnscope.diagnostics._session import diagnostic_session, in_batches
from vulnscope.diagnostics.hutchinson import HutchinsonEstimate, hutchinson
from vulnscope.diagnostics.lanczos import random_start_ritz_pairs
from vulnscope.errors import InvalidArgumentError

__all__ = [
    "HessianResult",
    "LossCurvature",
    "input_hessian_eigenvalues",
    "input_hessian_norms",
    "loss_curvature",
]

Operator = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LossCurvature:
    """The loss at a batch, its input gradient, and its input Hessian as an operator.

    Attributes:
        loss: (N,) cross-entropy per sample.
        gradient: (N, n) float64 input gradient of each sample's loss.
        hvp: (N, n) float64 -> (N, n) float64, each sample's Hessian times its vector.

    """

    loss: Tensor
    gradient: Tensor
    hvp: Operator


def loss_curvature(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> LossCurvature:
    """Build the Hessian-vector product of the cross-entropy at ``x`` (gradients enabled).

    One forward and one backward pass with ``create_graph=True``; each product is then one
    backward pass through the retained double graph. The loss is summed over the batch,
    which makes the product of the sum the stack of per-sample products.

    Args:
        model: (N, ...) -> (N, C) logits, samples independent.
        x: (N, ...) inputs.
        y: (N,) labels.

    Returns:
        :class:`LossCurvature`.

    """
    inputs = x.detach().clone().requires_grad_(True)
    # In float64: for a confident sample p - e_y is tiny and float32 would lose its digits.
    logits = check_logits(model(inputs), x.shape[0])
    losses = torch.nn.functional.cross_entropy(logits.double(), y, reduction="none")
    (gradient,) = torch.autograd.grad(losses.sum(), inputs, create_graph=True)

    def hvp(v: Tensor) -> Tensor:
        if not gradient.requires_grad:  # the loss is linear in x: no curvature at all
            return torch.zeros_like(v)
        (image,) = torch.autograd.grad(
            gradient, inputs, v.to(x.dtype).view_as(x), retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(v) if image is None else image.flatten(1).double()

    return LossCurvature(losses.detach(), gradient.detach().flatten(1).double(), hvp)


@dataclass(frozen=True)
class HessianResult:
    """Top eigenpairs of the input Hessian of the loss, by magnitude.

    Attributes:
        eigenvalues: (N, k) float64, ordered by decreasing ``|λ|`` (signs kept).
        eigenvectors: (N, k, *x.shape[1:]) unit L2 norm, in ``x``'s dtype.
        residuals: (N, k) Lanczos bound ``||H v - λ v||``: small means converged.
        loss: (N,) cross-entropy at ``x``.
        gradient_norm: (N,) L2 norm of the input gradient of the loss.
        steps: Lanczos steps taken.

    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    loss: Tensor
    gradient_norm: Tensor
    steps: int


def _top_by_magnitude(
    curvature: LossCurvature, x: Tensor, k: int, steps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    shape = (x.shape[0], x[0].numel())
    pairs = random_start_ritz_pairs(
        curvature.hvp, shape, steps, generator=generator, device=x.device
    )
    order = pairs.values.abs().argsort(dim=1, descending=True, stable=True)[:, :k]
    values = pairs.values.gather(1, order)
    vectors = pairs.vectors.gather(1, order[..., None].expand(-1, -1, pairs.vectors.shape[2]))
    return values, vectors, pairs.residuals.gather(1, order)


def input_hessian_eigenvalues(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    k: int = 5,
    *,
    steps: int | None = None,
    seed: int | None = 0,
    batch_size: int | None = 256,
) -> HessianResult:
    """Top ``k`` eigenpairs (by magnitude) of the input Hessian of the cross-entropy.

    Lanczos with full re-orthogonalisation on Hessian-vector products (double backward):
    ``steps`` products per sample. Extreme eigenvalues converge first; ``residuals`` says
    how far each pair is from converged, and ``steps = n`` is exact.

    Args:
        model: (N, ...) -> (N, C) logits, samples independent (eval mode).
        x: (N, ...) inputs.
        y: (N,) labels of the loss.
        k: number of eigenpairs, 1 <= k <= n.
        steps: Lanczos steps, k <= steps <= n (default ``min(n, max(2k + 20, 40))``).
        seed: seed of the start vectors.
        batch_size: samples per pass (``None``: all at once).

    Returns:
        :class:`HessianResult`.

    Example:
        >>> import torch
        >>> from vulnscope.diagnostics import input_hessian_eigenvalues
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
        ...                             torch.nn.Linear(8, 2)).eval()
        >>> hr = input_hessian_eigenvalues(model, torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), k=2)
        >>> hr.eigenvalues.shape
        torch.Size([4, 2])

    """
    k = check_int(k, "k")
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x, y) as session:
        n = session.x[0].numel()
        m = min(n, max(2 * k + 20, 40)) if steps is None else check_int(steps, "steps")
        if not k <= m <= n:
            raise InvalidArgumentError(
                f"need k <= steps <= n = {n} (the number of input features), "
                f"got k={k} and steps={m}"
            )
        parts = []
        for part in in_batches(session.x.shape[0], batch_size):
            curvature = loss_curvature(
                session.model, session.x[part], cast(Tensor, session.y)[part]
            )
            values, vectors, residuals = _top_by_magnitude(
                curvature, session.x[part], k, m, generator
            )
            parts.append((values, vectors, residuals, curvature.loss, curvature.gradient))
    values, vectors, residuals, loss, gradient = (
        torch.cat(column) for column in zip(*parts, strict=True)
    )
    return HessianResult(
        eigenvalues=values,
        eigenvectors=vectors.to(x.dtype).reshape(x.shape[0], k, *x.shape[1:]),
        residuals=residuals,
        loss=loss.double(),
        gradient_norm=gradient.norm(dim=1),
        steps=m,
    )


def input_hessian_norms(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    probes: int = 32,
    seed: int | None = 0,
    batch_size: int | None = 256,
) -> HutchinsonEstimate:
    """Hutchinson estimates of the trace and Frobenius norm of the input Hessian of the loss.

    ``tr H = E[zᵀ H z]`` and ``||H||_F² = E[||H z||²]`` over Rademacher probes ``z``, from the
    same ``probes`` Hessian-vector products; ``||H||_F²`` is the CURE regulariser
    (Moosavi-Dezfooli et al. 2019).

    Args:
        model: (N, ...) -> (N, C) logits, samples independent.
        x: (N, ...) inputs.
        y: (N,) labels.
        probes: probes per sample, >= 2.
        seed: seed of the probes.
        batch_size: samples per pass.

    Returns:
        :class:`~vulnscope.diagnostics.hutchinson.HutchinsonEstimate` per sample.

    """
    probes = check_int(probes, "probes", minimum=2)
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x, y) as session:
        parts = []
        for part in in_batches(session.x.shape[0], batch_size):
            curvature = loss_curvature(
                session.model, session.x[part], cast(Tensor, session.y)[part]
            )
            shape = (curvature.gradient.shape[0], curvature.gradient.shape[1])
            parts.append(
                hutchinson(
                    curvature.hvp, shape, probes=probes, generator=generator, device=x.device
                )
            )
    return HutchinsonEstimate(
        trace=torch.cat([p.trace for p in parts]),
        trace_stderr=torch.cat([p.trace_stderr for p in parts]),
        frobenius_squared=torch.cat([p.frobenius_squared for p in parts]),
        frobenius_squared_stderr=torch.cat([p.frobenius_squared_stderr for p in parts]),
        probes=probes,
    )
