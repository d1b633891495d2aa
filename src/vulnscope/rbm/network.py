"""A deep network of stacked RBMs: the classification pass and the generation pass."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vulnscope._random import resolve_generator
from vulnscope._validation import (
    check_choice,
    check_finite,
    check_inputs,
    check_int,
    check_seed,
    check_tensor,
    describe,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.exact import binary_states, push_forward
from vulnscope.rbm.rbm import RBM, log_conditional, sample_bernoulli

__all__ = ["Chains", "DeepRBM"]

ClassifyMethod = Literal["sample", "exact", "mean_field"]


@dataclass(frozen=True)
class Chains:
    """Joint samples of every layer, drawn by ancestral sampling through the network.

    Attributes:
        states: one tensor per layer, in the order the pass visits them. Upward:
            ``[h_0 = x, h_1, ..., h_{N-1}, y]``; downward: ``[y, h_{N-1}, ..., h_0]``.
            Each is (B, S, n_k) for B inputs (or labels) and S chains; binary, and
            one-hot for the label layer.
        end_probs: the last layer's conditional probabilities given the layer before it
            (B, S, n_last): averaging them over chains is the Rao-Blackwellised estimate
            of ``q_N(y | x)`` (upward) or of ``q̃_0(x | y)`` (downward).

    """

    states: list[Tensor]
    end_probs: Tensor


class DeepRBM(nn.Module):
    r"""N stacked RBMs whose top layer is one softmax group of label units (Kenway 2018).

    Layer ``k`` joins ``h_{k-1}`` (``widths[k-1]`` units) to ``h_k``; ``h_0 = x`` is the
    flattened input and ``h_N = y`` the one-hot label. The classification pass (eq. 2)

    .. math::
        q_k(h_k | x) = \sum_{h_{k-1}} t_k(h_k | h_{k-1})\, q_{k-1}(h_{k-1} | x),
        \qquad q_0 = \delta_{h_0, x}

    is computed three ways by :meth:`classify`: ancestral sampling (batched chains,
    the network's own output), exact enumeration (hidden widths up to 16), and a
    mean-field pass ``μ_k = σ(W_k μ_{k-1} + a_k)`` that is deterministic and
    differentiable. The generation pass (eq. 9) runs the same RBMs downward from a label.

    ``forward`` returns the mean-field log-probabilities, so the network plugs into
    every attack and evaluation in vulnscope as an ordinary classifier (log-probabilities
    are valid logits); :meth:`classify` gives the stochastic pass.

    Args:
        widths: ``[n_0, n_1, ..., n_{N-1}]``: the input size then each hidden width.
        num_classes: label units in the top softmax group.
        seed: seed of the initial weights.

    Shape:
        Input: (B, *input_shape) with ``prod(input_shape) == widths[0]``; binary inputs
        for the network's intended use, real values accepted (the continuous relaxation
        the RG analysis differentiates). Output: (B, num_classes).

    Example:
        >>> net = DeepRBM([64, 32, 32], num_classes=10, seed=0)
        >>> net.depth, net(torch.zeros(5, 1, 8, 8)).shape
        (3, torch.Size([5, 10]))

    """

    def __init__(self, widths: Sequence[int], num_classes: int, *, seed: int | None = 0) -> None:
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
            raise InvalidTypeError(
                f"widths must be a sequence of layer sizes such as [64, 64, 64], "
                f"got {describe(widths)}"
            )
        if len(widths) < 1:
            raise InvalidArgumentError("widths must name at least the input size, got []")
        sizes = [check_int(width, f"widths[{k}]") for k, width in enumerate(widths)]
        classes = check_int(num_classes, "num_classes", minimum=2)
        generator = resolve_generator(None, check_seed(seed))
        layers = [
            RBM(n_in, n_out, generator=generator) for n_in, n_out in itertools.pairwise(sizes)
        ]
        layers.append(RBM(sizes[-1], classes, hidden="softmax", generator=generator))
        self.layers = nn.ModuleList(layers)

    @property
    def widths(self) -> list[int]:
        """``[n_0, ..., n_{N-1}]``, the sizes of every layer below the labels."""
        return [layer.n_visible for layer in self.rbms]

    @property
    def num_classes(self) -> int:
        """Number of label units."""
        return self.rbms[-1].n_hidden

    @property
    def depth(self) -> int:
        """N, the number of RBMs."""
        return len(self.layers)

    @property
    def rbms(self) -> list[RBM]:
        """The RBMs from the input upward (typed view of ``layers``)."""
        return [layer for layer in self.layers if isinstance(layer, RBM)]

    def flatten_input(self, x: Tensor) -> Tensor:
        """Check a batch of inputs and flatten it to (B, n_0)."""
        x = check_inputs(x, bounds=(-math.inf, math.inf))
        if math.prod(x.shape[1:]) != self.widths[0]:
            raise InvalidArgumentError(
                f"x must hold {self.widths[0]} values per sample (the network's input width), "
                f"got shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1).to(self.rbms[0].weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Mean-field log-probabilities of the labels: (B, ...) -> (B, C)."""
        hidden = self.mean_field(x)[-2]
        return self.rbms[-1].hidden_field(hidden).log_softmax(-1)

    def mean_field(self, x: Tensor) -> list[Tensor]:
        """The mean-field pass ``[x, μ_1, ..., μ_{N-1}, p(y)]``, each (B, n_k).

        The label probabilities are computed with ``log_softmax`` so that their log is
        finite and differentiable.
        """
        activity = self.flatten_input(x)
        activities = [activity]
        for rbm in self.rbms[:-1]:
            activity = rbm.hidden_probs(activity)
            activities.append(activity)
        activities.append(self.rbms[-1].hidden_field(activity).log_softmax(-1).exp())
        return activities

    def sample_up(
        self,
        x: Tensor,
        *,
        chains: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        straight_through: bool = False,
    ) -> Chains:
        """Ancestral sampling of the classification pass, ``chains`` per input.

        With ``straight_through`` each binary sample carries the gradient of its
        probability (``h = p + (sample - p).detach()``), the estimator that fine-tunes the
        sampled pass (Bengio, Léonard and Courville 2013).

        Returns:
            :class:`Chains` with states (B, chains, n_k) and ``end_probs`` (B, chains, C).

        """
        chains = check_int(chains, "chains")
        generator = resolve_generator(generator, check_seed(seed))
        state = self.flatten_input(x)[:, None, :].expand(-1, chains, -1)
        states = [state]
        for rbm in self.rbms[:-1]:
            probs = rbm.hidden_probs(state)
            sample = sample_bernoulli(probs.detach(), generator)
            state = probs + (sample - probs).detach() if straight_through else sample
            states.append(state)
        top = self.rbms[-1]
        label_probs = top.hidden_field(state).log_softmax(-1).exp()
        states.append(top.sample_hidden(state.detach(), generator))
        return Chains(states, label_probs)

    def sample_down(
        self,
        y: Tensor,
        *,
        chains: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> Chains:
        """Ancestral sampling of the generation pass ``q̃_k(h_k | y)`` (eq. 9).

        Args:
            y: (B,) class indices, or (B, C) label vectors (one-hot, or any real vector:
                the generation pass is defined for perturbed outputs too).
            chains: chains per label.
            generator: random generator of the chains.
            seed: seed of the chains when no ``generator`` is given.

        Returns:
            :class:`Chains` with states ``[y, h_{N-1}, ..., h_0]``, each (B, chains, n_k), and
            ``end_probs`` (B, chains, n_0): ``t_1(x | h_1)``.

        """
        chains = check_int(chains, "chains")
        generator = resolve_generator(generator, check_seed(seed))
        labels = self._label_vectors(y)
        state = labels[:, None, :].expand(-1, chains, -1)
        states = [state]
        probs = state
        for rbm in reversed(self.rbms):
            probs = rbm.visible_probs(state)
            state = sample_bernoulli(probs, generator)
            states.append(state)
        return Chains(states, probs)

    def classify(
        self,
        x: Tensor,
        *,
        method: ClassifyMethod = "sample",
        chains: int = 256,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``q_N(y | x)``: (B, ...) -> (B, C) probabilities.

        Args:
            x: inputs.
            method: ``"sample"`` (ancestral sampling, Rao-Blackwellised at the top layer),
                ``"exact"`` (enumeration; hidden widths up to 16) or ``"mean_field"``.
            chains: chains per input for ``"sample"``.
            seed: seed of the chains when no ``generator`` is given.
            generator: random generator of the chains.

        """
        method = check_choice(method, "method", ("sample", "exact", "mean_field"))  # type: ignore[assignment]
        if method == "exact":
            return self.exact_up(x)[-1]
        if method == "mean_field":
            return self.mean_field(x)[-1]
        return self.sample_up(x, chains=chains, seed=seed, generator=generator).end_probs.mean(1)

    def exact_up(self, x: Tensor, *, dtype: torch.dtype = torch.float64) -> list[Tensor]:
        """The exact classification pass ``[q_1(h_1|x), ..., q_{N-1}, q_N(y|x)]``.

        ``q_k`` is (B, 2**n_k) over the states of :func:`binary_states`; ``q_N`` is (B, C).
        Differentiable in ``x`` and in the weights. Hidden widths up to 16.
        """
        inputs = self.flatten_input(x).to(dtype)
        first = self.rbms[0]
        field = inputs @ first.weight.to(dtype).t() + first.hidden_bias.to(dtype)
        if first.hidden == "softmax":
            return [field.softmax(-1)]
        states = binary_states(first.n_hidden, dtype=dtype)
        dist = log_conditional(field, states).exp()
        dists = [dist]
        for rbm in self.rbms[1:]:
            dist = push_forward(dist, rbm, upward=True)
            dists.append(dist)
        return dists

    def exact_down(self, y: Tensor, *, dtype: torch.dtype = torch.float64) -> list[Tensor]:
        """The exact generation pass ``[q̃_{N-1}(h|y), ..., q̃_0(x|y)]``, each (B, 2**n_k).

        The label vector enters the top layer's field, ``q̃_{N-1}(h | y) = Π_i
        Bernoulli(σ(W_Nᵀ y + b_N)_i)`` (Kenway 2018b, eqs. 9 and 23), for one-hot and real
        vectors alike: the conditional :meth:`sample_down` draws from, and the function of
        ``y`` whose Fisher information steers output poisoning. Differentiable in ``y``.
        Every width, the input's included, must be at most 16.
        """
        labels = self._label_vectors(y, dtype=dtype)
        top = self.rbms[-1]
        field = labels @ top.weight.to(dtype) + top.visible_bias.to(dtype)
        dist = log_conditional(field, binary_states(top.n_visible, dtype=dtype)).exp()
        dists = [dist]
        for rbm in reversed(self.rbms[:-1]):
            dist = push_forward(dist, rbm, upward=False)
            dists.append(dist)
        return dists

    def generate(
        self,
        y: Tensor,
        *,
        chains: int = 64,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``E[x | y]`` under the generation pass: (B,) labels -> (B, n_0) pixel probabilities."""
        return self.sample_down(y, chains=chains, seed=seed, generator=generator).end_probs.mean(1)

    def _label_vectors(self, y: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        y = check_tensor(y, "y", of=" of labels")
        dtype = dtype if dtype is not None else self.rbms[0].weight.dtype
        if y.ndim == 1 and not y.is_floating_point():
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise InvalidArgumentError(
                    f"y must hold class indices in [0, {self.num_classes - 1}], "
                    f"got values in [{int(y.min())}, {int(y.max())}]"
                )
            return nn.functional.one_hot(y, self.num_classes).to(dtype)
        if y.ndim == 2 and y.shape[1] == self.num_classes and y.is_floating_point():
            return check_finite(y, "y").to(dtype)
        raise InvalidArgumentError(
            f"y must be (B,) class indices or (B, {self.num_classes}) label vectors, "
            f"got {describe(y)}"
        )
