"""Exact couplings: the Walsh-Hadamard transform and its inverse against explicit sums."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm import RBM
from vulnscope.rbm.exact import push_forward
from vulnscope.rg import coupling_map, distribution_from_couplings, exact_couplings, walsh_hadamard


def spin_matrix(n: int) -> torch.Tensor:
    """O[α, h] = Π_{j ∈ α} (2 h_j - 1), α and h both bit masks, by explicit python products."""
    size = 1 << n
    rows = [
        [
            math.prod(2 * ((h >> j) & 1) - 1 for j in range(n) if (alpha >> j) & 1)
            for h in range(size)
        ]
        for alpha in range(size)
    ]
    return torch.tensor(rows, dtype=torch.float64)


def random_distribution(n: int, seed: int, *, batch: tuple[int, ...] = ()) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn((*batch, 1 << n), generator=generator, dtype=torch.float64)
    return logits.softmax(-1)


@given(st.integers(1, 7), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_walsh_hadamard_equals_the_explicit_operator_matrix(n, lead, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn((*([2] * lead), 1 << n), generator=generator, dtype=torch.float64)
    expected = values @ spin_matrix(n).t()
    torch.testing.assert_close(walsh_hadamard(values), expected, rtol=1e-12, atol=1e-10)


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_exact_couplings_equal_the_explicit_projection(n, seed):
    q = random_distribution(n, seed)
    expected = -(spin_matrix(n) @ q.log()) / (1 << n)
    torch.testing.assert_close(exact_couplings(q), expected[1:], rtol=1e-12, atol=1e-10)


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_distribution_from_couplings_inverts_exact_couplings(n, seed):
    q = random_distribution(n, seed, batch=(3,))
    torch.testing.assert_close(
        distribution_from_couplings(exact_couplings(q)), q, rtol=1e-10, atol=1e-14
    )


@given(st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_exact_couplings_inverts_distribution_from_couplings(n, seed):
    generator = torch.Generator().manual_seed(seed)
    g = 0.5 * torch.randn((1 << n) - 1, generator=generator, dtype=torch.float64)
    q = distribution_from_couplings(g)
    # and q is exp(-Σ g_α O_α) / Z by the explicit matrix
    energy = spin_matrix(n)[1:].t() @ g
    torch.testing.assert_close(q, (-energy).softmax(-1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(exact_couplings(q), g, rtol=1e-10, atol=1e-10)


def rbm_with_normal_weights(n_visible: int, n_hidden: int, seed: int) -> RBM:
    generator = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden).double()
    with torch.no_grad():
        for param in rbm.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return rbm


@pytest.mark.parametrize(("n_visible", "n_hidden"), [(2, 3), (3, 2), (4, 4)])
def test_coupling_map_is_the_pushed_forward_distribution(n_visible, n_hidden):
    rbm = rbm_with_normal_weights(n_visible, n_hidden, seed=n_visible * 10 + n_hidden)
    g = 0.5 * torch.randn(
        (2, (1 << n_visible) - 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with torch.no_grad():
        coarse = coupling_map(g, rbm)
        assert coarse.shape == (2, (1 << n_hidden) - 1)
        # an independent q_k: Σ_v t(h | v) q(v) with t built from sigmoids by hand
        q = (-(spin_matrix(n_visible)[1:].t() @ g.t()).t()).softmax(-1)
        v = torch.tensor(
            [[(i >> j) & 1 for j in range(n_visible)] for i in range(1 << n_visible)],
            dtype=torch.float64,
        )
        h = torch.tensor(
            [[(i >> j) & 1 for j in range(n_hidden)] for i in range(1 << n_hidden)],
            dtype=torch.float64,
        )
        p = torch.sigmoid(v @ rbm.weight.t() + rbm.hidden_bias)  # (V, n_hidden)
        t = (h[None] * p[:, None] + (1 - h[None]) * (1 - p[:, None])).prod(-1)  # (V, H)
        q_k = q @ t
        torch.testing.assert_close(distribution_from_couplings(coarse), q_k, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(push_forward(q, rbm), q_k, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: walsh_hadamard(torch.zeros(3)), InvalidArgumentError, "2\\*\\*n entries.*got 3"),
        (lambda: walsh_hadamard(torch.zeros(1)), InvalidArgumentError, "got 1"),
        (
            lambda: exact_couplings(torch.tensor([0.5, 0.5, 0.0, 0.0])),
            InvalidArgumentError,
            "positive on every state",
        ),
        (
            lambda: exact_couplings(torch.tensor([1, 1, 1, 1])),
            InvalidTypeError,
            "probs must be a floating tensor",
        ),
        (lambda: exact_couplings([0.25] * 4), InvalidTypeError, "probs must be a floating tensor"),
        (
            lambda: distribution_from_couplings(torch.zeros(4)),
            InvalidArgumentError,
            r"2\*\*n - 1 entries, got 4",
        ),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
