r"""The input Fisher information of a classifier and its top eigenpairs.

For logits ``z = f(x)`` and ``p = softmax(z)`` the Fisher information of the predictive
distribution with respect to the input is

.. math:: F(x) = J^\top (\mathrm{diag}\,p - p p^\top) J, \qquad J = \partial z / \partial x,

the metric that the KL divergence between ``p(x)`` and ``p(x + \delta)`` induces to second
order (Zhao et al. 2019, "The adversarial attack and detection under the Fisher information
metric"; Kenway 2018 for the RG reading: its top eigenvector is the most dangerous small
perturbation). ``M = diag p - p pᵀ`` has rank C - 1, so F has at most C - 1 non-zero
eigenvalues, and they are those of the C x C matrix ``M^{1/2} J Jᵀ M^{1/2}``: C vector-Jacobian
products per sample give them exactly. When C is large, Lanczos on ``v -> Jᵀ M J v`` (one
Jacobian-vector and one vector-Jacobian product a step) finds the top k instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_choice, check_int, check_logits, check_seed
from vulnscope.diagnostics._session import diagnostic_session, in_batches
from vulnscope.diagnostics.hutchinson import hutchinson
from vulnscope.diagnostics.lanczos import random_start_ritz_pairs
from vulnscope.errors import InvalidArgumentError

__all__ = ["FISHER_METHODS", "FisherResult", "fisher_eigenpairs", "input_fisher", "logit_jacobian"]

logger = logging.getLogger(__name__)

FISHER_METHODS = ("auto", "exact", "lanczos")
_EXACT_UP_TO_CLASSES = 128
_TRACE_PROBES = 32


@dataclass(frozen=True)
class FisherResult:
    """Top eigenpairs and trace of the input Fisher information, per sample.

    Attributes:
        eigenvalues: (N, k) float64, descending, >= 0.
        eigenvectors: (N, k, *x.shape[1:]) unit L2 norm, in ``x``'s dtype. Each is oriented
            so that moving along it raises, to first order, the loss ``-log p`` of the class
            the model predicts at ``x`` (eigenvectors have no sign of their own).
        trace: (N,) float64 ``tr F``: the sum of all eigenvalues.
        trace_stderr: (N,) standard error of ``trace`` (0 when exact; a Hutchinson estimate
            on the Lanczos path).
        probabilities: (N, C) float64 ``softmax(f(x))``.
        method: ``"exact"`` or ``"lanczos"``.
        residuals: (N, k) Lanczos bound ``||F v - λ v||`` of each pair (0 on the exact path).

    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    trace: Tensor
    trace_stderr: Tensor
    probabilities: Tensor
    method: str
    residuals: Tensor


def logit_jacobian(
    model: Callable[[Tensor], Tensor], x: Tensor, *, vectorize: bool | None = None
) -> tuple[Tensor, Tensor]:
    """Logits and their Jacobian with respect to the input, one per sample.

    C vector-Jacobian products of the whole batch, one per logit: either C backward passes
    through one retained graph, or one ``torch.func.vjp`` whose pullback is vectorised over
    the C one-hot cotangents with ``torch.func.vmap``. On a CPU the loop is the faster
    (about 2x on the digits CNN: the batched max-pool and convolution backward kernels
    copy more), on an accelerator the single vectorised pass; models with operations that
    ``vmap`` cannot batch fall back to the loop.

    Args:
        model: (N, ...) -> (N, C), treating samples independently.
        x: (N, ...) inputs.
        vectorize: ``True`` for ``vmap``, ``False`` for the loop, ``None`` to choose by
            device (``vmap`` off the CPU).

    Returns:
        ``(logits, jacobian)``: (N, C) and (N, C, *x.shape[1:]), both detached.

    """
    x = x.detach()
    if vectorize is None:
        vectorize = x.device.type != "cpu"
    if vectorize:
        try:
            logits, pullback = torch.func.vjp(model, x)[:2]
            check_logits(logits, x.shape[0])
            (rows,) = torch.func.vmap(pullback)(_one_hot_cotangents(logits))
            return logits.detach(), rows.movedim(0, 1).detach()
        except (RuntimeError, NotImplementedError) as error:
            logger.debug("vmap over the vector-Jacobian products failed (%s); looping", error)
    inputs = x.clone().requires_grad_(True)
    outputs = check_logits(model(inputs), x.shape[0])
    cotangents = _one_hot_cotangents(outputs)
    classes = outputs.shape[1]
    rows = [
        torch.autograd.grad(outputs, inputs, cotangents[c], retain_graph=c + 1 < classes)[0]
        for c in range(classes)
    ]
    return outputs.detach(), torch.stack(rows, 1)


def _one_hot_cotangents(logits: Tensor) -> Tensor:
    """(C, N, C): cotangent c selects logit c of every sample."""
    batch, classes = logits.shape
    eye = torch.eye(classes, dtype=logits.dtype, device=logits.device)
    return eye[:, None, :].expand(classes, batch, classes)


def _softmax_metric(probs: Tensor) -> Tensor:
    """``diag p - p pᵀ``: (N, C, C)."""
    return torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]


def _orient_uphill(vectors: Tensor, uphill: Tensor) -> Tensor:
    """Flip each of ``vectors`` (N, k, n) whose inner product with ``uphill`` (N, n) is < 0."""
    signs = torch.where(torch.einsum("bkn,bn->bk", vectors, uphill) < 0, -1.0, 1.0)
    return vectors * signs[..., None].to(vectors.dtype)


_SMALL_EIGENVALUE = 1e-6
"""Relative size below which an eigenpair is taken from the SVD rather than from ``A Aᵀ``."""


def _exact(probs: Tensor, jacobian: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenpairs and trace of F from the C x n factor ``A = M^{1/2} J`` (``F = Aᵀ A``).

    The non-zero eigenvalues of F are those of the C x C matrix ``A Aᵀ``, and an eigenvector
    ``u`` of it gives ``v = Aᵀu / √λ``. That amplifies the rounding in ``u`` by ``√(λ₁/λ)``,
    so for samples whose k-th eigenvalue is below 1e-6 λ₁ (a confident prediction makes M
    nearly singular; a rank-deficient F has exact zeros) the eigenpairs come instead from
    the SVD of A, whose right singular vectors are accurate and orthonormal even for the
    zero eigenvalues.

    ``probs`` (N, C) and ``jacobian`` (N, C, n), float64.
    """
    weights, basis = torch.linalg.eigh(_softmax_metric(probs))
    root = basis @ torch.diag_embed(weights.clamp_min(0).sqrt()) @ basis.transpose(1, 2)
    factor = root @ jacobian
    values, small = torch.linalg.eigh(factor @ factor.transpose(1, 2))
    values, small = values.flip(1)[:, :k].clamp_min(0), small.flip(2)[:, :, :k]
    vectors = small.transpose(1, 2) @ factor / values.sqrt().clamp_min(1e-300)[:, :, None]
    suspect = values[:, -1] <= _SMALL_EIGENVALUE * values[:, 0]
    if bool(suspect.any()):
        _, singular, right = torch.linalg.svd(factor[suspect], full_matrices=False)
        values[suspect], vectors[suspect] = singular[:, :k] ** 2, right[:, :k, :]
    return values, vectors, (factor**2).sum((1, 2))


def _one_hot(labels: Tensor, like: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(labels, like.shape[1]).to(like.dtype)


def _auto_method(classes: int) -> str:
    return "exact" if classes <= _EXACT_UP_TO_CLASSES else "lanczos"


def fisher_eigenpairs(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    k: int = 1,
    *,
    method: str = "auto",
    steps: int | None = None,
    probes: int = 32,
    generator: torch.Generator | None = None,
) -> FisherResult:
    """:func:`input_fisher` on one batch of inputs already validated, with gradients enabled.

    Attacks call this inside their own session; see :func:`input_fisher` for the arguments.
    """
    if method == "auto":
        with torch.no_grad():
            method = _auto_method(model(x[:1]).shape[1])
    batch, n = x.shape[0], x[0].numel()
    if method == "exact":
        logits, jacobian = logit_jacobian(model, x)
        probs = torch.softmax(logits.double(), dim=1)
        values, vectors, trace = _exact(probs, jacobian.flatten(2).double(), k)
        residuals, trace_stderr = torch.zeros_like(values), torch.zeros_like(trace)
        uphill = torch.einsum(
            "bc,bcn->bn", probs - _one_hot(probs.argmax(1), probs), jacobian.flatten(2).double()
        )
    else:
        generator = generator if generator is not None else make_generator(0)
        logits, pullback = torch.func.vjp(model, x)[:2]
        logits = check_logits(logits, x.shape[0]).detach()
        probs = torch.softmax(logits.double(), dim=1)

        def operator(v: Tensor) -> Tensor:
            tangent = torch.func.jvp(model, (x,), (v.to(x.dtype).view_as(x),))[1].double()
            metric_tangent = probs * tangent - probs * (probs * tangent).sum(1, keepdim=True)
            image: Tensor = pullback(metric_tangent.to(logits.dtype))[0]
            return image.flatten(1).double()

        m = min(n, steps if steps is not None else max(2 * k + 20, 40))
        if m < k:
            raise InvalidArgumentError(f"steps must be at least k = {k}, got {m}")
        pairs = random_start_ritz_pairs(
            operator, (batch, n), m, generator=generator, device=x.device
        )
        values = pairs.values.flip(1)[:, :k].clamp_min(0)
        vectors = pairs.vectors.flip(1)[:, :k]
        residuals = pairs.residuals.flip(1)[:, :k]
        estimate = hutchinson(
            operator, (batch, n), probes=probes, generator=generator, device=x.device
        )
        trace, trace_stderr = estimate.trace, estimate.trace_stderr
        uphill_cotangent = (probs - _one_hot(probs.argmax(1), probs)).to(logits.dtype)
        uphill = pullback(uphill_cotangent)[0].flatten(1).double()
    vectors = _orient_uphill(vectors, uphill)
    return FisherResult(
        eigenvalues=values,
        eigenvectors=vectors.to(x.dtype).reshape(batch, -1, *x.shape[1:]),
        trace=trace,
        trace_stderr=trace_stderr,
        probabilities=probs,
        method=method,
        residuals=residuals,
    )


def input_fisher(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    k: int = 1,
    *,
    method: str = "auto",
    steps: int | None = None,
    probes: int = 32,
    seed: int | None = 0,
    batch_size: int | None = 256,
) -> FisherResult:
    """Top ``k`` eigenpairs and the trace of the input Fisher information at each input.

    Args:
        model: maps (N, ...) inputs to (N, C) logits, treating samples independently
            (an ``nn.Module`` in eval mode).
        x: (N, ...) floating inputs.
        k: number of eigenpairs, 1 <= k <= min(C - 1, n): F has rank at most C - 1.
        method: ``"exact"`` (C vector-Jacobian products and a C x C eigenproblem),
            ``"lanczos"`` (``steps`` Jacobian-vector and vector-Jacobian products; the trace
            by Hutchinson with ``probes`` probes), or ``"auto"``: exact up to 128 classes.
        steps: Lanczos steps (default ``max(2k + 20, 40)``, at most n).
        probes: Hutchinson probes for the trace on the Lanczos path.
        seed: seed of the Lanczos start vectors and probes.
        batch_size: samples per pass (``None``: all at once).

    Returns:
        :class:`FisherResult`.

    Example:
        >>> import torch
        >>> from vulnscope.diagnostics import input_fisher
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> fr = input_fisher(model, torch.rand(5, 1, 2, 2), k=2)
        >>> fr.eigenvalues.shape, fr.eigenvectors.shape
        (torch.Size([5, 2]), torch.Size([5, 2, 1, 2, 2]))

    """
    method = check_choice(method, "method", FISHER_METHODS)
    k = check_int(k, "k")
    probes = check_int(probes, "probes", minimum=2)
    if steps is not None:
        steps = check_int(steps, "steps")
    generator = make_generator(check_seed(seed))
    with diagnostic_session(model, x) as session:
        classes, n = session.classes, session.x[0].numel()
        if k > min(classes - 1, n):
            raise InvalidArgumentError(
                f"k must be at most min(C - 1, n) = {min(classes - 1, n)}: the input Fisher "
                f"of a {classes}-class model on {n} features has rank at most that; got k={k}"
            )
        if method == "auto":
            method = _auto_method(classes)
        parts = [
            fisher_eigenpairs(
                session.model,
                session.x[part],
                k,
                method=method,
                steps=steps,
                probes=probes,
                generator=generator,
            )
            for part in in_batches(session.x.shape[0], batch_size)
        ]
    return FisherResult(
        eigenvalues=torch.cat([p.eigenvalues for p in parts]),
        eigenvectors=torch.cat([p.eigenvectors for p in parts]),
        trace=torch.cat([p.trace for p in parts]),
        trace_stderr=torch.cat([p.trace_stderr for p in parts]),
        probabilities=torch.cat([p.probabilities for p in parts]),
        method=parts[0].method,
        residuals=torch.cat([p.residuals for p in parts]),
    )
