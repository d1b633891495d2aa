"""One restricted Boltzmann machine: binary visible units, binary or softmax hidden units."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope._validation import check_choice, check_int

__all__ = ["RBM", "log_conditional", "sample_bernoulli", "sample_categorical"]

HiddenKind = Literal["bernoulli", "softmax"]


def sample_bernoulli(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary states with ``P(h = 1) = probs``, in the dtype of ``probs``."""
    uniform = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
    return (uniform < probs).to(probs.dtype)


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One-hot states drawn from the categorical distributions in the last dimension.

    Inverse-CDF sampling with one uniform per row, so it is batched over any leading
    shape (``torch.multinomial`` accepts only matrices).
    """
    uniform = torch.rand(
        (*probs.shape[:-1], 1), generator=generator, dtype=probs.dtype, device=probs.device
    )
    # rand is in [0, 1): a draw of exactly 0 would pick a leading zero-probability category
    uniform = uniform.clamp_min(torch.finfo(probs.dtype).tiny)
    cumulative = probs.cumsum(-1)
    index = (cumulative < uniform * cumulative[..., -1:]).sum(-1, keepdim=True)
    index = index.clamp_max(probs.shape[-1] - 1)
    return torch.zeros_like(probs).scatter_(-1, index, 1.0)


def log_conditional(field: Tensor, states: Tensor, *, softmax: bool = False) -> Tensor:
    """``log t(state | source)`` of a factorised conditional, for every pair.

    Args:
        field: (Ms, m) the field on the ``m`` target units from each of Ms sources
            (``W v + a`` upward, ``Wᵀ h + b`` downward).
        states: (Mt, m) target states: binary, or one-hot for a softmax group.
        softmax: the target units are one softmax group instead of independent Bernoullis.

    Returns:
        (Ms, Mt) log-probabilities.

    """
    if softmax:
        return field.log_softmax(-1) @ states.t()
    return field @ states.t() - functional.softplus(field).sum(-1, keepdim=True)


class RBM(nn.Module):
    r"""A restricted Boltzmann machine (Kenway 2018, eq. 1; Salakhutdinov 2015).

    .. math::
        t(h, v) \propto \exp(h^\top W v + a^\top h + b^\top v)

    with binary visible units ``v`` and either independent binary hidden units or one
    softmax group of one-hot hidden units (the label layer at the top of a classifier).
    Both conditionals factorise: ``t(h | v)`` is Bernoulli(σ(W v + a)) or softmax(W v + a)
    (eq. 3), ``t(v | h)`` is Bernoulli(σ(Wᵀ h + b)) (eq. 10).

    Args:
        n_visible: number of visible units.
        n_hidden: number of hidden units (classes, for a softmax group).
        hidden: ``"bernoulli"`` or ``"softmax"``.
        generator: random generator of the initial weights (normal, standard deviation 0.01).

    Attributes:
        weight: (n_hidden, n_visible) couplings ``W``.
        hidden_bias: (n_hidden,) ``a``.
        visible_bias: (n_visible,) ``b``.

    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        hidden: HiddenKind = "bernoulli",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.n_visible = check_int(n_visible, "n_visible")
        self.n_hidden = check_int(n_hidden, "n_hidden", minimum=2 if hidden == "softmax" else 1)
        self.hidden: HiddenKind = check_choice(hidden, "hidden", ("bernoulli", "softmax"))  # type: ignore[assignment]
        self.weight = nn.Parameter(0.01 * torch.randn(n_hidden, n_visible, generator=generator))
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))

    def extra_repr(self) -> str:
        """Sizes and hidden kind, for ``repr``."""
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, hidden={self.hidden!r}"

    def hidden_field(self, v: Tensor) -> Tensor:
        """``W v + a``: (..., n_visible) -> (..., n_hidden)."""
        return functional.linear(v, self.weight, self.hidden_bias)

    def visible_field(self, h: Tensor) -> Tensor:
        """``Wᵀ h + b``: (..., n_hidden) -> (..., n_visible)."""
        return functional.linear(h, self.weight.t(), self.visible_bias)

    def hidden_probs(self, v: Tensor) -> Tensor:
        """``t(h_j = 1 | v)``: sigmoid, or softmax over the group. (..., n_hidden)."""
        field = self.hidden_field(v)
        return field.softmax(-1) if self.hidden == "softmax" else field.sigmoid()

    def visible_probs(self, h: Tensor) -> Tensor:
        """``t(v_i = 1 | h)`` = σ(Wᵀ h + b): (..., n_visible)."""
        return self.visible_field(h).sigmoid()

    def sample_hidden(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Hidden states drawn from ``t(h | v)``: binary, or one-hot for a softmax group."""
        probs = self.hidden_probs(v)
        if self.hidden == "softmax":
            return sample_categorical(probs, generator)
        return sample_bernoulli(probs, generator)

    def sample_visible(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Visible states drawn from ``t(v | h)``."""
        return sample_bernoulli(self.visible_probs(h), generator)

    def log_hidden_conditional(self, h: Tensor, v: Tensor) -> Tensor:
        """``log t(h | v)`` for every pair: h (Mh, n_hidden), v (Mv, n_visible) -> (Mv, Mh).

        Used by exact enumeration; for a softmax group ``h`` must be one-hot.
        """
        return log_conditional(self.hidden_field(v), h, softmax=self.hidden == "softmax")

    def free_energy(self, v: Tensor) -> Tensor:
        """``F(v) = -log Σ_h exp(hᵀ W v + aᵀ h + bᵀ v)``: (..., n_visible) -> (...)."""
        field = self.hidden_field(v)
        visible_term = v @ self.visible_bias
        if self.hidden == "softmax":
            return -visible_term - field.logsumexp(-1)
        return -visible_term - functional.softplus(field).sum(-1)

    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """``E(v, h) = -(hᵀ W v + aᵀ h + bᵀ v)`` for matching batches: (...)."""
        return -((self.hidden_field(v) * h).sum(-1) + v @ self.visible_bias)
