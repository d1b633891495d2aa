"""The RG vulnerability analysis of a deep RBM classifier, input by input.

For each input ``x`` (RG.md sections 3 and 4; Kenway 2018, eqs. 4-6 and 20-22):

1. ``S`` chains of the classification pass give joint samples of every layer.
2. For each hidden layer ``k = 2..N-1`` the generic estimator :func:`stability_matrix`
   gives ``T^(k) = ∂g^(k)/∂g^(k-1)``; the label layer's ``T^(N)`` uses the same estimator
   with the labels enumerated (each chain contributes every class with weight
   ``t_N(y | h_{N-1}) / S``), which is exact in ``y`` and sees classes too unlikely to be
   sampled.
3. Layer 1 is explicit: ``g_i^(1) = -(W_1 x + a_1)_i / 2`` on the single spins, so
   ``J = ∂g^(N)/∂x = T^(N) ⋯ T^(2) ∂g^(1)/∂x`` and the input Fisher information is
   ``F = Jᵀ Cov_{q_N}(O^(N)) J``. Its top eigenvectors are the dangerous directions.

Errors come from one jackknife over blocks of chains, shared by every layer, so that
they carry through products and eigenvalues. The hidden levels all use the same operator
subsets, so that each square ``T^(k)`` maps one coupling space to itself and has
eigenvalues; units of different layers have no natural correspondence, so singular
values (which do not depend on that choice of basis pairing) are reported too.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vulnscope._validation import check_choice, check_int, check_seed
from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.network import DeepRBM
from vulnscope.rg.chain import ChainRG, active_operators, chain_spectra, embed
from vulnscope.rg.mcrg import (
    StabilityMatrix,
    _check_condition,
    _solve,
    jackknife_error,
    stability_matrix,
)
from vulnscope.rg.operators import OperatorSet

__all__ = ["OPERATOR_CHOICES", "InputRG", "analyse_input", "choose_operators"]

OperatorChoice = Literal["singles", "pairs", "correlation", "triples", "complete"]
OPERATOR_CHOICES: tuple[str, ...] = ("singles", "pairs", "correlation", "triples", "complete")
"""Operator sets for the hidden levels (see :func:`choose_operators`)."""


def choose_operators(
    network: DeepRBM, choice: OperatorChoice = "pairs", *, states: list[Tensor] | None = None
) -> OperatorSet:
    """One operator set for every hidden level of ``network`` (equal widths required).

    - ``"singles"``: the ``n`` spins.
    - ``"pairs"``: singles plus the ``n`` pairs with the largest ``|Σ_k W_kᵀ W_k|``, the
      pairwise couplings the layers above induce (RG.md section 2).
    - ``"correlation"``: singles plus the ``n`` pairs most correlated in ``states``
      (the hidden layers' samples, pooled).
    - ``"triples"``: ``"pairs"`` plus ``n / 2`` triples by third-order weight products.
    - ``"complete"``: all ``2**n - 1`` products (widths up to 16).
    """
    choice = check_choice(choice, "operators", OPERATOR_CHOICES)  # type: ignore[assignment]
    widths = network.widths[1:]
    if not widths:
        raise InvalidArgumentError(
            "the RG analysis needs a network with a hidden layer (depth >= 2)"
        )
    if len(set(widths)) != 1:
        raise InvalidArgumentError(
            f"the RG analysis needs equal hidden widths (one coupling space), got {widths}"
        )
    n = widths[0]
    if choice == "correlation" and n >= 2:
        if states is None:
            raise InvalidArgumentError("operators='correlation' needs sampled states")
        pairs = OperatorSet.pairs_by_correlation(torch.cat(states, 0), n)
        return OperatorSet.singles(n) + pairs
    stacked = torch.cat([rbm.weight.detach() for rbm in network.rbms[1:]], 0)
    return operators_by_weight(stacked, choice)


def operators_by_weight(weight: Tensor, choice: str) -> OperatorSet:
    """An operator set on the ``n`` units that ``weight`` (m, n) couples to the layer above.

    ``"singles"``; ``"pairs"``: singles plus the ``n`` pairs with the largest
    ``|(Wᵀ W)_{ij}|``; ``"triples"``: pairs plus ``n / 2`` triples by third-order weight
    products; ``"complete"``: all ``2**n - 1`` products.
    """
    n = weight.shape[1]
    singles = OperatorSet.singles(n)
    if choice == "complete":
        return OperatorSet.complete(n)
    if choice == "singles" or n < 2:
        return singles
    pairs = OperatorSet.pairs_by_weight(weight, min(n, n * (n - 1) // 2))
    if choice == "triples" and n >= 3:
        return singles + pairs + OperatorSet.triples_by_weight(weight, max(1, n // 2))
    return singles + pairs


@dataclass(frozen=True)
class InputRG(ChainRG):
    """The RG analysis of one input.

    The fields it shares with the generation pass's analysis are those of
    :class:`~vulnscope.rg.chain.ChainRG`.

    Attributes:
        layers: ``T^(k)`` for k = 2..N (the last is the label layer, rectangular).
        leading: (N-1,) leading |eigenvalue| of each square hidden ``T^(k)`` and, last, the
            leading singular value of the label layer's ``T^(N)``.
        leading_stderr: (N-1,) jackknife errors of ``leading``.
        singular: (N-1,) leading singular value of every ``T^(k)``.
        relevant: (N-2,) number of relevant eigenvalues (|λ| beyond one error above 1) per
            square hidden layer.
        product_norm: spectral norm of ``P = T^(N) ⋯ T^(2)``; ``product_norm_stderr`` its error.
        jacobian: (C', n_0) ``∂g^(N)/∂x`` in the reduced label basis.
        fisher_eigenvalues: (k,) top eigenvalues of F; ``fisher_stderr`` their errors.
        fisher_eigenvectors: (k, n_0) unit eigenvectors (the dangerous directions).
        label_probs: (C,) ``q_N(y | x)`` from the chains.
        reference_class: the most probable class, left out of the reduced label basis.

    """

    label_probs: Tensor
    reference_class: int


def analyse_input(
    network: DeepRBM,
    x: Tensor,
    operators: OperatorSet,
    *,
    samples: int = 10_000,
    blocks: int = 20,
    top_k: int = 3,
    seed: int | None = 0,
) -> InputRG:
    """Stability matrices, chain-rule Jacobian and Fisher information for one input.

    Args:
        network: a trained :class:`DeepRBM` of depth N >= 2 with equal hidden widths.
        x: one input, (n_0,) or any shape with n_0 values.
        operators: the operator set of every hidden level (:func:`choose_operators`).
        samples: chains S.
        blocks: jackknife blocks of chains.
        top_k: Fisher eigenpairs kept.
        seed: seed of the chains.

    Returns:
        :class:`InputRG`.

    """
    samples = check_int(samples, "samples", minimum=2)
    blocks = min(check_int(blocks, "blocks", minimum=2), samples)
    top_k = check_int(top_k, "top_k")
    if network.depth < 2:
        raise InvalidArgumentError("the RG analysis needs depth >= 2 (a hidden layer)")
    inputs = network.flatten_input(x.reshape(1, -1))
    with torch.no_grad():
        chains = network.sample_up(inputs, chains=samples, seed=check_seed(seed))
    hidden = [state[0] for state in chains.states[1:-1]]  # (S, n) for k = 1..N-1
    values = [operators(state) for state in hidden]
    active = [
        active_operators(value, operators, state, 2 * blocks)
        for value, state in zip(values, hidden, strict=True)
    ]
    layers = [
        embed(stability_matrix(coarse[:, keep_c], fine[:, keep_f], blocks=blocks), keep_c, keep_f)
        for (fine, keep_f), (coarse, keep_c) in itertools.pairwise(zip(values, active, strict=True))
    ]
    label_probs = chains.end_probs[0].double()  # (S, C)
    label_layer, reference, label_cov, label_cov_replicas = _label_layer(
        label_probs, values[-1][:, active[-1]].double(), blocks
    )
    if label_layer.T.shape[0] == 0:
        raise InvalidArgumentError("the network is certain of this input's class: no label varies")
    layers.append(
        embed(label_layer, torch.ones(label_layer.T.shape[0], dtype=torch.bool), active[-1])
    )

    first = network.rbms[0].weight.detach().double()
    d_first = torch.zeros(len(operators), first.shape[1], dtype=torch.float64)
    for row, subset in enumerate(operators.subsets):
        if len(subset) == 1:
            d_first[row] = -first[subset[0]] / 2

    def chain(Ts: list[Tensor], cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        product = Ts[-1]
        for T in reversed(Ts[:-1]):
            product = product @ T
        jacobian = product @ d_first
        return product, jacobian, jacobian.transpose(-1, -2) @ cov @ jacobian

    product, jacobian, fisher = chain([layer.T for layer in layers], label_cov)
    evals, evecs = torch.linalg.eigh(fisher)
    k = min(top_k, evals.shape[0])
    fisher_eigenvalues = evals.flip(0)[:k].clamp_min(0)
    fisher_eigenvectors = evecs.flip(1)[:, :k].t()

    replicas = [layer.replicas for layer in layers]
    rep_product, _, rep_fisher = chain([r for r in replicas if r is not None], label_cov_replicas)
    fisher_stderr = jackknife_error(torch.linalg.eigvalsh(rep_fisher).flip(-1)[:, :k])
    norm_stderr = float(jackknife_error(torch.linalg.matrix_norm(rep_product, ord=2)))

    spectra = chain_spectra(layers)
    return InputRG(
        layers=layers,
        leading=spectra.leading,
        leading_stderr=spectra.leading_stderr,
        singular=spectra.singular,
        relevant=spectra.relevant,
        product_norm=float(torch.linalg.matrix_norm(product, ord=2)),
        product_norm_stderr=norm_stderr,
        jacobian=jacobian,
        fisher_eigenvalues=fisher_eigenvalues,
        fisher_stderr=fisher_stderr,
        fisher_eigenvectors=fisher_eigenvectors,
        label_probs=label_probs.mean(0),
        reference_class=reference,
    )


def _label_layer(
    label_probs: Tensor, fine: Tensor, blocks: int
) -> tuple[StabilityMatrix, int, Tensor, Tensor]:
    """``T^(N)`` with the labels enumerated, and ``Cov_{q_N}(O^(N))``, with jackknife replicas.

    The coarse operators are the class indicators minus a reference class (the most
    probable: the indicators of all C classes sum to one, so one is redundant). Each chain
    contributes every class c with weight ``p_c(h_{N-1}) / S``: this is
    :func:`stability_matrix` with ``weights`` on the enumerated labels (a test checks the
    two agree), written with per-block sums so that the jackknife costs nothing extra:
    ``A = diag(p̄) - p̄ p̄ᵀ`` and ``B = E[p(h) (O(h) - Ō)ᵀ]``.
    """
    samples, classes = label_probs.shape
    mean = label_probs.mean(0)
    reference = int(mean.argmax())
    kept = [c for c in range(classes) if c != reference and float(mean[c]) > 1e-13]
    probs = label_probs[:, kept]
    edges = torch.linspace(0, samples, blocks + 1).round().long().tolist()
    spans = list(itertools.pairwise(edges))
    sizes = torch.tensor([hi - lo for lo, hi in spans], dtype=torch.float64)
    sum_p = torch.stack([probs[lo:hi].sum(0) for lo, hi in spans])
    sum_o = torch.stack([fine[lo:hi].sum(0) for lo, hi in spans])
    sum_po = torch.stack([probs[lo:hi].t() @ fine[lo:hi] for lo, hi in spans])

    def solve(n: Tensor, sp: Tensor, so: Tensor, spo: Tensor) -> tuple[Tensor, Tensor, float]:
        p_bar, o_bar = sp / n[..., None], so / n[..., None]
        A = torch.diag_embed(p_bar) - p_bar[..., :, None] * p_bar[..., None, :]
        B = spo / n[..., None, None] - p_bar[..., :, None] * o_bar[..., None, :]
        condition = _check_condition(A, 1e15) if A.ndim == 2 else math.nan
        return _solve(A, B), A, condition

    T, A, condition = solve(sizes.sum(), sum_p.sum(0), sum_o.sum(0), sum_po.sum(0))
    replicas, covariances, _ = solve(
        sizes.sum() - sizes, sum_p.sum(0) - sum_p, sum_o.sum(0) - sum_o, sum_po.sum(0) - sum_po
    )
    layer = StabilityMatrix(
        T, jackknife_error(replicas), condition, samples, A, replicas, covariances
    )
    return layer, reference, A, covariances
