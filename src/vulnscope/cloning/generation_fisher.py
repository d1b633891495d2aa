r"""The Fisher information of a deep RBM's generation pass with respect to its output vector.

The generation pass (Kenway 2018b, eq. 9) runs the classifier's RBMs downward from an
output vector ``y``: ``q̃_{N-1}(h | y) = t_N(h | y)``, then
``q̃_{k-1}(h_{k-1} | y) = Σ_{h_k} t_k(h_{k-1} | h_k) q̃_k(h_k | y)`` down to the input
``q̃_0(x | y)``. Its Fisher information in ``y`` (eq. 20) says which change of a published
output most changes the data a cloner would associate with it. In couplings of the
effective Hamiltonians ``q̃_k = exp(-Σ_α g̃_α^(k) O_α) / Z`` (RG.md section 5):

1. Level N-1 is explicit: ``g̃_i^(N-1) = -(W_Nᵀ y + b_N)_i / 2`` on the single spins and 0
   on every other operator (eq. 23), so ``∂g̃^(N-1)/∂y = -W_Nᵀ / 2`` on those rows.
2. For ``k = N-1, ..., 1`` the generation stability matrix
   ``T̃^(k) = ∂g̃^(k-1)/∂g̃^(k)`` (eq. 13) comes from joint samples of ``(h_k, h_{k-1})``
   on the downward chains, by the generic Monte Carlo RG estimator
   :func:`~vulnscope.rg.stability_matrix` (coarse level ``h_{k-1}``, fine level ``h_k``).
3. ``D = ∂g̃^(0)/∂y = T̃^(1) ⋯ T̃^(N-1) ∂g̃^(N-1)/∂y`` (eq. 22) and
   ``F̃ = Dᵀ Cov_{q̃_0}(O^(0)) D`` (eq. 20), a (C, C) matrix per output.

Level 0 is the input: singles plus the ``n_0`` pairs most strongly coupled through the
first layer (``|W_1ᵀ W_1|``) for ``"pairs"``; the hidden levels share one operator set
(:func:`~vulnscope.rg.choose_operators`). Operators that do not vary on the chains (pixels
the pass never turns on) drop out exactly as in :func:`~vulnscope.rg.analyse_input`:
they give zero rows and columns rather than singular systems.

The paper's precondition for the defence is that the generation fixed point is unstable:
some ``T̃^(k)`` has an eigenvalue above one. :meth:`GenerationPassFisher.analyse` reports
it, with jackknife errors over blocks of chains.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vulnscope._random import row_seeds
from vulnscope._validation import check_choice, check_finite, check_int, check_seed, describe
from vulnscope.cloning.simplex import sum_zero_basis
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.exact import binary_states
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.rbm import log_conditional
from vulnscope.rg.analysis import choose_operators, operators_by_weight
from vulnscope.rg.chain import ChainRG, active_operators, chain_spectra, embed
from vulnscope.rg.mcrg import StabilityMatrix, jackknife_error, stability_matrix
from vulnscope.rg.operators import OperatorSet

__all__ = [
    "GENERATION_OPERATOR_CHOICES",
    "GenerationPassFisher",
    "GenerationRG",
    "exact_generation_chain_fisher",
    "exact_generation_fisher",
    "input_operators",
    "top_derivative",
]

GenerationOperatorChoice = Literal["singles", "pairs", "triples", "complete"]
GENERATION_OPERATOR_CHOICES: tuple[str, ...] = ("singles", "pairs", "triples", "complete")
"""Operator sets of the generation chain. ``"correlation"`` is left out: it would choose a
different set for every output, so outputs would not share one coupling space."""


def input_operators(network: DeepRBM, choice: GenerationOperatorChoice = "pairs") -> OperatorSet:
    """The operator set of the input level ``h_0 = x`` for the generation chain.

    - ``"singles"``: the ``n_0`` pixel spins.
    - ``"pairs"``: singles plus the ``n_0`` pairs with the largest ``|(W_1ᵀ W_1)_{ij}|``,
      the pixel couplings that the first hidden layer induces.
    - ``"triples"``: ``"pairs"`` plus ``n_0 / 2`` triples by third-order weight products.
    - ``"complete"``: all ``2**n_0 - 1`` products (``n_0 <= 16``).
    """
    choice = check_choice(choice, "operators", GENERATION_OPERATOR_CHOICES)  # type: ignore[assignment]
    return operators_by_weight(network.rbms[0].weight.detach(), choice)


@dataclass(frozen=True)
class GenerationRG(ChainRG):
    """The RG analysis of the generation pass from one output vector.

    The fields it shares with the classification pass's analysis
    (:class:`~vulnscope.rg.InputRG`) are those of :class:`~vulnscope.rg.chain.ChainRG`.

    Attributes:
        output: (C,) the output vector ``y`` (float64).
        layers: ``T̃^(k)`` for ``k = N-1, ..., 1`` in the order the pass visits them; the
            square hidden-to-hidden matrices first, the last (into the input level, another
            operator set) rectangular.
        leading: (N-1,) leading |eigenvalue| of each square ``T̃^(k)`` (k = N-1..2) and,
            last, the leading singular value of ``T̃^(1)``.
        leading_stderr: (N-1,) jackknife errors of ``leading``.
        singular: (N-1,) leading singular value of every ``T̃^(k)``.
        relevant: (N-2,) eigenvalues beyond one error above 1 per square layer: a relevant
            (unstable) direction of the generation fixed point, Kenway's precondition.
        product_norm: spectral norm of ``T̃^(1) ⋯ T̃^(N-1)``; ``product_norm_stderr`` its error.
        top_derivative: (M_h, C) ``∂g̃^(N-1)/∂y`` (explicit).
        jacobian: (M_0, C) ``D = ∂g̃^(0)/∂y``.
        input_covariance: (M_0, M_0) ``Cov_{q̃_0}(O^(0))``.
        fisher: (C, C) ``F̃ = Dᵀ Cov_{q̃_0}(O^(0)) D``.
        fisher_eigenvalues: (C,) its eigenvalues, largest first; ``fisher_stderr`` their
            jackknife errors.
        fisher_eigenvectors: (C, C) unit eigenvectors as rows, in the same order.
        top_vector_stderr: jackknife error (2-norm) of the top unit eigenvector.
        tangent_eigenvalues: (C-1,) eigenvalues of ``F̃`` restricted to the directions
            with ``Σ_c δy_c = 0`` (those that keep a probability vector normalised);
            ``tangent_stderr`` their errors, ``tangent_eigenvectors`` (C-1, C) the vectors
            and ``tangent_vector_stderr`` the error of the top one.
        pixel_probs: (n_0,) ``E[x | y]`` under the pass (Rao-Blackwellised).
        hidden_operators, input_operators: the operator sets of the two kinds of level.

    """

    output: Tensor
    top_derivative: Tensor
    input_covariance: Tensor
    fisher: Tensor
    top_vector_stderr: float
    tangent_eigenvalues: Tensor
    tangent_stderr: Tensor
    tangent_eigenvectors: Tensor
    tangent_vector_stderr: float
    pixel_probs: Tensor
    hidden_operators: OperatorSet
    input_operators: OperatorSet


@dataclass(frozen=True)
class _Chain:
    """What :func:`_generation_chain` measures for one output: the estimate and replicas."""

    layers: list[StabilityMatrix]
    top_derivative: Tensor
    jacobian: Tensor
    fisher: Tensor
    fisher_replicas: Tensor
    pixel_probs: Tensor


class GenerationPassFisher:
    r"""``F̃(y)`` of a deep RBM's generation pass by the chain of stability matrices.

    Implements :class:`~vulnscope.cloning.reverse.ReverseModel` for a
    :class:`~vulnscope.rbm.DeepRBM` (Kenway 2018b, eqs. 20-23; module docstring).

    Each output vector gets its own ``samples`` downward chains, seeded from ``seed`` and
    the bytes of that vector, so a given ``y`` always gets the same ``F̃`` whatever batch
    it comes in.

    Cost per output: one downward pass of ``samples`` chains, then per level the operator
    values (``samples x M``), two covariance products (``samples x M²``) and a greedy
    independence check (``M³``), and ``blocks`` small solves per layer for the jackknife
    (``M ≈ 2 n``: singles and pairs). Measured on the cached digits network (depth 4,
    width 64, ``M = 128`` on every level), one CPU thread, ``"pairs"``:

    ========  ==========  ===================  ====================  ==================
    samples   CPU/output  top eigenvalue err   top eigenvector err   ``F̃(v̂)/λ_1`` min
    ========  ==========  ===================  ====================  ==================
    2 000     0.22 s      5 %                  15 %                  0.95
    4 000     0.27 s      3 %                  10 %                  0.96
    16 000    0.55 s      1.8 %                5 %                   0.98
    ========  ==========  ===================  ====================  ==================

    (errors: jackknife, medians over outputs; the eigenvector error is the sine of its
    angle to a 128 000-chain estimate, largest where the top two eigenvalues nearly
    coincide, which is also where it matters least: the last column is the Fisher
    information along the estimated direction over the true largest.) The default buys
    the eigenvector to about 5 %; 4 000 chains halve the cost and still find a
    direction within 4 % of the stiffest. :meth:`analyse` adds the eigen-analysis of
    every layer (about 0.4 s). ``"singles"`` costs about half as much and gave the same
    top eigenvector within 2 % there (the induced pair couplings barely move ``F̃``).

    Args:
        network: a :class:`~vulnscope.rbm.DeepRBM` of depth N >= 2, equal hidden widths.
        operators: one of :data:`GENERATION_OPERATOR_CHOICES` (see :func:`input_operators`
            and :func:`~vulnscope.rg.choose_operators`).
        samples: downward chains per output vector.
        blocks: jackknife blocks of chains.
        seed: base seed of the chains (None: fresh entropy on every call).

    Example:
        >>> net = DeepRBM([6, 4, 4], num_classes=3, seed=0)
        >>> fim = GenerationPassFisher(net, samples=500, blocks=10)
        >>> fim.output_fisher(torch.tensor([[0.7, 0.2, 0.1]])).shape
        torch.Size([1, 3, 3])

    """

    def __init__(
        self,
        network: DeepRBM,
        *,
        operators: GenerationOperatorChoice = "pairs",
        samples: int = 16_000,
        blocks: int = 20,
        seed: int | None = 0,
    ) -> None:
        if not isinstance(network, DeepRBM):
            raise InvalidTypeError(
                f"network must be a vulnscope.rbm.DeepRBM, got {describe(network)}"
            )
        if network.depth < 2:
            raise InvalidArgumentError(
                f"network must have a hidden layer (depth >= 2) for the generation chain, "
                f"got depth {network.depth}"
            )
        self.network = network
        self.operators: GenerationOperatorChoice = check_choice(
            operators, "operators", GENERATION_OPERATOR_CHOICES
        )  # type: ignore[assignment]
        self.samples = check_int(samples, "samples", minimum=2)
        self.blocks = check_int(blocks, "blocks", minimum=2)
        self.seed = check_seed(seed)
        choose_operators(network, self.operators)  # equal hidden widths, checked early

    @property
    def num_classes(self) -> int:
        """C, the length of the output vectors."""
        return self.network.num_classes

    def output_fisher(self, probs: Tensor) -> Tensor:
        """``F̃`` for each output vector: (B, C) -> (B, C, C) float64, symmetric PSD."""
        outputs = check_output_vectors(probs, self.num_classes)
        hidden, first = self._operator_sets()
        seeds = row_seeds(outputs, self.seed)
        fisher = torch.zeros(
            outputs.shape[0], self.num_classes, self.num_classes, dtype=torch.float64
        )
        for row in range(outputs.shape[0]):
            fisher[row] = self._chain(outputs[row], hidden, first, seeds[row]).fisher
        return fisher

    def analyse(self, y: Tensor) -> GenerationRG:
        """The full RG analysis of the generation pass from one output vector ``y`` (C,)."""
        if isinstance(y, Tensor) and y.ndim != 1:
            raise InvalidArgumentError(
                f"y must be one output vector of shape ({self.num_classes},), "
                f"got shape {tuple(y.shape)}"
            )
        rows = y[None] if isinstance(y, Tensor) else y
        output = check_output_vectors(rows, self.num_classes, name="y")[0]
        hidden, first = self._operator_sets()
        chain = self._chain(output, hidden, first, row_seeds(output[None], self.seed)[0])
        return _report(output, chain, hidden, first)

    def _operator_sets(self) -> tuple[OperatorSet, OperatorSet]:
        hidden = choose_operators(self.network, self.operators)
        return hidden, input_operators(self.network, self.operators)

    def _chain(self, y: Tensor, hidden: OperatorSet, first: OperatorSet, seed: int) -> _Chain:
        blocks = min(self.blocks, self.samples)
        with torch.no_grad():
            chains = self.network.sample_down(y[None], chains=self.samples, seed=seed)
        states = [state[0] for state in chains.states[1:]]  # h_{N-1}, ..., h_0: (S, n_k)
        sets = [hidden] * (len(states) - 1) + [first]
        values = [ops(state) for ops, state in zip(sets, states, strict=True)]
        active = [
            active_operators(value, ops, state, 2 * blocks)
            for value, ops, state in zip(values, sets, states, strict=True)
        ]
        levels = list(zip(values, active, strict=True))  # fine to coarse: the pass's order
        layers = [
            _layer(coarse, keep_c, fine, keep_f, blocks)
            for (fine, keep_f), (coarse, keep_c) in itertools.pairwise(levels)
        ]
        d_top = top_derivative(self.network, hidden)
        return _combine(layers, d_top, chains.end_probs[0].double().mean(0))


def _layer(
    coarse: Tensor, keep_c: Tensor, fine: Tensor, keep_f: Tensor, blocks: int
) -> StabilityMatrix:
    """``T̃`` on the active operators, embedded; all zero when a level has none active.

    A level whose every operator is frozen passes nothing on: a change of the couplings
    above cannot change it, so the chain (and ``F̃``) is exactly zero through it.
    """
    if bool(keep_c.any()) and bool(keep_f.any()):
        # column selection copies the (S, M) values: skip it when every operator is active
        coarse = coarse if bool(keep_c.all()) else coarse[:, keep_c]
        fine = fine if bool(keep_f.all()) else fine[:, keep_f]
        return embed(stability_matrix(coarse, fine, blocks=blocks), keep_c, keep_f)
    count = min(blocks, coarse.shape[0])
    rows, cols = keep_c.numel(), keep_f.numel()
    zeros = torch.zeros(rows, cols, dtype=torch.float64)
    covariance = torch.zeros(rows, rows, dtype=torch.float64)
    return StabilityMatrix(
        T=zeros,
        stderr=zeros,
        condition_number=1.0,
        num_samples=coarse.shape[0],
        coarse_covariance=covariance,
        replicas=zeros.expand(count, -1, -1).clone(),
        covariance_replicas=covariance.expand(count, -1, -1).clone(),
    )


def top_derivative(network: DeepRBM, operators: OperatorSet) -> Tensor:
    """``∂g̃^(N-1)/∂y`` (M, C): ``-W_Nᵀ / 2`` on the single-spin rows, zero elsewhere (eq. 23).

    ``t_N(h | y) = Π_i Bernoulli(σ(W_Nᵀ y + b_N)_i)`` is ``exp(Σ_i s_i f_i / 2) / Z`` in
    spins ``s = 2h - 1``, so its couplings are ``g̃_i = -f_i / 2``, linear in ``y``.
    """
    weight = network.rbms[-1].weight.detach().double()  # (C, n_{N-1})
    derivative = torch.zeros(len(operators), weight.shape[0], dtype=torch.float64)
    for row, subset in enumerate(operators.subsets):
        if len(subset) == 1:
            derivative[row] = -weight[:, subset[0]] / 2
    return derivative


def _combine(layers: list[StabilityMatrix], d_top: Tensor, pixel_probs: Tensor) -> _Chain:
    """Eq. 22 then eq. 20, on the estimate and on every leave-one-block-out replica."""
    jacobian = d_top
    for layer in layers:
        jacobian = layer.T @ jacobian
    covariance = layers[-1].coarse_covariance
    fisher = jacobian.t() @ covariance @ jacobian
    replicas = [layer.replicas for layer in layers if layer.replicas is not None]
    cov_replicas = layers[-1].covariance_replicas
    if len(replicas) != len(layers) or cov_replicas is None:  # unreachable: unweighted
        raise TypeError("a sampled stability matrix without jackknife replicas")
    rep_jacobian = d_top.expand(replicas[0].shape[0], -1, -1)
    for replica in replicas:
        rep_jacobian = replica @ rep_jacobian
    rep_fisher = rep_jacobian.transpose(-1, -2) @ cov_replicas @ rep_jacobian
    return _Chain(
        layers, d_top, jacobian, _symmetrise(fisher), _symmetrise(rep_fisher), pixel_probs
    )


def _symmetrise(matrix: Tensor) -> Tensor:
    return (matrix + matrix.transpose(-1, -2)) / 2


def _eigen(fisher: Tensor, replicas: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """Eigenvalues (largest first, >= 0), their jackknife errors and row eigenvectors.

    Also the jackknife error of the top unit eigenvector, each replica's sign aligned
    with the estimate's first.
    """
    values, vectors = torch.linalg.eigh(fisher)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1).t()
    rep_values, rep_vectors = torch.linalg.eigh(replicas)
    stderr = jackknife_error(rep_values.flip(-1))
    top = rep_vectors[..., -1]
    top = top * torch.where(top @ vectors[0] >= 0, 1.0, -1.0)[:, None]  # eigh's sign is arbitrary
    vector_error = float(jackknife_error(top).pow(2).sum().sqrt())
    return values, stderr, vectors, vector_error


def _report(output: Tensor, chain: _Chain, hidden: OperatorSet, first: OperatorSet) -> GenerationRG:
    spectra = chain_spectra(chain.layers)
    product = torch.eye(chain.layers[0].T.shape[1], dtype=torch.float64)
    rep_product = product.expand(chain.fisher_replicas.shape[0], -1, -1)
    for layer in chain.layers:
        product = layer.T @ product
        rep_product = layer.replicas @ rep_product  # type: ignore[operator]
    norm_stderr = float(jackknife_error(torch.linalg.matrix_norm(rep_product, ord=2)))
    values, stderr, vectors, vector_error = _eigen(chain.fisher, chain.fisher_replicas)
    classes = output.shape[0]
    basis = sum_zero_basis(classes)
    t_values, t_stderr, t_vectors, t_error = _eigen(
        basis.t() @ chain.fisher @ basis, basis.t() @ chain.fisher_replicas @ basis
    )
    return GenerationRG(
        output=output,
        layers=chain.layers,
        leading=spectra.leading,
        leading_stderr=spectra.leading_stderr,
        singular=spectra.singular,
        relevant=spectra.relevant,
        product_norm=float(torch.linalg.matrix_norm(product, ord=2)),
        product_norm_stderr=norm_stderr,
        top_derivative=chain.top_derivative,
        jacobian=chain.jacobian,
        input_covariance=chain.layers[-1].coarse_covariance,
        fisher=chain.fisher,
        fisher_eigenvalues=values,
        fisher_stderr=stderr,
        fisher_eigenvectors=vectors,
        top_vector_stderr=vector_error,
        tangent_eigenvalues=t_values,
        tangent_stderr=t_stderr,
        tangent_eigenvectors=t_vectors @ basis.t(),
        tangent_vector_stderr=t_error,
        pixel_probs=chain.pixel_probs,
        hidden_operators=hidden,
        input_operators=first,
    )


def check_output_vectors(probs: object, num_classes: int, *, name: str = "probs") -> Tensor:
    """(B, C) finite floating output vectors with ``C == num_classes``, as float64.

    Any real vector is accepted (the generation pass is defined for perturbed outputs
    too); probability vectors are the intended use.
    """
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise InvalidTypeError(
            f"{name} must be a floating torch.Tensor of output vectors, got {describe(probs)}"
        )
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InvalidArgumentError(
            f"{name} must have shape (B, {num_classes}), one output vector of the "
            f"{num_classes} classes per row, got shape {tuple(probs.shape)}"
        )
    return check_finite(probs, name).detach().to(torch.float64)


def exact_generation_fisher(network: DeepRBM, probs: Tensor) -> Tensor:
    """``F̃`` by autograd through the exactly enumerated generation pass: (B, C) -> (B, C, C).

    ``F̃ = Σ_x q̃_0(x|y) ∇_y log q̃_0(x|y) ∇_y log q̃_0(x|y)ᵀ`` with ``q̃_0`` from
    :meth:`~vulnscope.rbm.DeepRBM.exact_down` (every width, the input's included, at most 16) and
    the C columns of ``∇_y log q̃_0`` by forward-mode differentiation. The reference
    that the chain of stability matrices is tested against.
    """
    outputs = check_output_vectors(probs, network.num_classes)

    def log_input_dist(y: Tensor) -> Tensor:
        return network.exact_down(y)[-1].log()

    columns = []
    for c in range(network.num_classes):
        tangent = torch.zeros_like(outputs)
        tangent[:, c] = 1.0
        result = torch.func.jvp(log_input_dist, (outputs,), (tangent,))
        log_q = result[0].detach()
        columns.append(result[1].detach())
    score = torch.stack(columns, -1)  # (B, 2**n_0, C)
    q = log_q.exp()
    fisher = score.transpose(1, 2) @ (q[..., None] * score)
    return _symmetrise(fisher)


def exact_generation_chain_fisher(network: DeepRBM, probs: Tensor) -> Tensor:
    """``F̃`` by the chain rule of eqs. 20-23 with exact expectations: (B, C) -> (B, C, C).

    The same chain as :class:`GenerationPassFisher` with the complete operator set on
    every level and every expectation an exact sum: the joint states of each layer are
    enumerated with weights ``q̃_k(h_k | y) t_k(h_{k-1} | h_k)`` and passed to
    :func:`~vulnscope.rg.stability_matrix` as ``weights``. With complete sets the chain
    rule is exact, so this equals :func:`exact_generation_fisher` to rounding: the test
    of the method. Every width at most about 8 (the joint states of a layer number
    ``2**(n_k + n_{k-1})``).
    """
    outputs = check_output_vectors(probs, network.num_classes)
    if network.depth < 2:
        raise InvalidArgumentError(
            f"network must have a hidden layer (depth >= 2), got depth {network.depth}"
        )
    widths = network.widths
    states = [binary_states(n, dtype=torch.float64) for n in widths]
    sets = [OperatorSet.complete(n) for n in widths]
    values = [ops(state) for ops, state in zip(sets, states, strict=True)]
    kernels = {}  # k -> t_k(h_{k-1} | h_k) as (2**n_k, 2**n_{k-1})
    for k in range(1, network.depth):
        rbm = network.rbms[k - 1]
        field = states[k] @ rbm.weight.detach().double() + rbm.visible_bias.detach().double()
        kernels[k] = log_conditional(field, states[k - 1]).exp()
    d_top = top_derivative(network, sets[-1])
    with torch.no_grad():
        dists = network.exact_down(outputs)  # q̃_{N-1}, ..., q̃_0
    fisher = torch.zeros(
        outputs.shape[0], network.num_classes, network.num_classes, dtype=torch.float64
    )
    for row in range(outputs.shape[0]):
        jacobian = d_top
        covariance = torch.zeros(0)
        for k in range(network.depth - 1, 0, -1):
            joint = dists[network.depth - 1 - k][row][:, None] * kernels[k]
            coarse = values[k - 1].repeat(states[k].shape[0], 1)
            fine = values[k].repeat_interleave(states[k - 1].shape[0], 0)
            layer = stability_matrix(coarse, fine, joint.reshape(-1) / joint.sum())
            jacobian = layer.T @ jacobian
            covariance = layer.coarse_covariance
        fisher[row] = _symmetrise(jacobian.t() @ covariance @ jacobian)
    return fisher
