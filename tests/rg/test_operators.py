"""Spin-product operators against explicit python products, and the operator selections."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm import binary_states
from vulnscope.rg import OperatorSet, exact_couplings


def python_product(subset, state) -> float:
    return math.prod(2 * state[i] - 1 for i in subset)


@st.composite
def operator_sets_and_states(draw):
    n = draw(st.integers(1, 6))
    all_subsets = [s for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    subsets = draw(st.lists(st.sampled_from(all_subsets), min_size=1, max_size=10, unique=True))
    rows = draw(st.integers(1, 5))
    binary = draw(st.booleans())
    values = st.sampled_from([0.0, 1.0]) if binary else st.floats(0, 1, allow_nan=False)
    states = draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=rows, max_size=rows))
    return n, subsets, states


@given(operator_sets_and_states())
def test_operator_values_equal_explicit_products(case):
    n, subsets, states = case
    ops = OperatorSet.from_subsets(n, subsets)
    got = ops(torch.tensor(states, dtype=torch.float64))
    expected = [[python_product(subset, state) for subset in subsets] for state in states]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    assert ops.orders == [len(s) for s in subsets]


def test_operator_values_on_a_leading_batch_shape():
    ops = OperatorSet.complete(3)
    states = binary_states(3).reshape(2, 4, 3)
    got = ops(states)
    assert got.shape == (2, 4, 7)
    torch.testing.assert_close(got.reshape(8, 7), ops(binary_states(3)))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_complete_set_is_ordered_by_bit_mask(n):
    ops = OperatorSet.complete(n)
    assert len(ops) == 2**n - 1
    for m, subset in enumerate(ops.subsets, start=1):
        assert subset == tuple(j for j in range(n) if m >> j & 1)


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_complete_couplings_reconstruct_minus_log_q(n, seed):
    # H(h) = Σ_α g_α O_α(h) must equal -log q(h) up to a constant, in the complete set's order
    generator = torch.Generator().manual_seed(seed)
    q = torch.rand(2**n, generator=generator, dtype=torch.float64) + 0.01
    q = q / q.sum()
    g = exact_couplings(q)
    energy = OperatorSet.complete(n)(binary_states(n, dtype=torch.float64)) @ g
    difference = -q.log() - energy
    torch.testing.assert_close(difference, difference.mean().expand(2**n), rtol=0, atol=1e-10)


def test_labels_and_join():
    ops = OperatorSet.singles(3) + OperatorSet.from_subsets(3, [(2, 0), (1,)])
    # (1,) is a duplicate of a single and is dropped; (2, 0) is sorted
    assert ops.subsets == ((0,), (1,), (2,), (0, 2))
    assert ops.labels == ["s0", "s1", "s2", "s0·s2"]


def test_pairs_by_weight_against_a_brute_force_ranking():
    weight = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram = weight.t() @ weight
    pairs = list(itertools.combinations(range(6), 2))
    ranked = sorted(pairs, key=lambda p: -abs(float(gram[p[0], p[1]])))
    assert OperatorSet.pairs_by_weight(weight, 4).subsets == tuple(ranked[:4])


def test_pairs_by_correlation_against_a_brute_force_ranking():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(2000, 5, generator=generator, dtype=torch.float64)
    mixed = base @ torch.randn(5, 5, generator=generator, dtype=torch.float64)
    states = (mixed > 0).double()
    corr = torch.corrcoef(states.t())
    pairs = list(itertools.combinations(range(5), 2))
    ranked = sorted(pairs, key=lambda p: -abs(float(corr[p[0], p[1]])))
    assert OperatorSet.pairs_by_correlation(states, 3).subsets == tuple(ranked[:3])


def test_triples_by_weight_against_a_brute_force_ranking():
    # with 4 * count >= all pairs, every unit is a candidate, so all triples are scored
    weight = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    triples = list(itertools.combinations(range(5), 3))
    score = {
        t: abs(sum(float(weight[m, t[0]] * weight[m, t[1]] * weight[m, t[2]]) for m in range(4)))
        for t in triples
    }
    ranked = sorted(triples, key=lambda t: -score[t])
    assert OperatorSet.triples_by_weight(weight, 3).subsets == tuple(ranked[:3])


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: OperatorSet.from_subsets(3, [()]), InvalidArgumentError, "must not be empty"),
        (
            lambda: OperatorSet.from_subsets(3, [(0, 3)]),
            InvalidArgumentError,
            r"units in \[0, 2\], got \[0, 3\]",
        ),
        (lambda: OperatorSet.from_subsets(3, [(-1,)]), InvalidArgumentError, r"units in \[0, 2\]"),
        (lambda: OperatorSet.from_subsets(3, []), InvalidArgumentError, "at least one operator"),
        (lambda: OperatorSet.from_subsets(0, [(0,)]), InvalidArgumentError, "n_units must be"),
        (lambda: OperatorSet.complete(17), InvalidArgumentError, "n_units <= 16, got 17"),
        (
            lambda: OperatorSet.singles(2) + OperatorSet.singles(3),
            InvalidArgumentError,
            "same units",
        ),
        (
            lambda: OperatorSet.pairs_by_weight(torch.randn(3, 4), 7),
            InvalidArgumentError,
            "count must be at most 6 pairs of 4 units, got 7",
        ),
        (
            lambda: OperatorSet.pairs_by_weight(torch.randn(4), 1),
            InvalidTypeError,
            "weight must be a 2-D floating tensor",
        ),
        (
            lambda: OperatorSet.triples_by_weight(torch.randn(3, 2), 1),
            InvalidArgumentError,
            "triples need at least 3 units, got 2",
        ),
        (
            lambda: OperatorSet.singles(3)(torch.zeros(2, 4)),
            InvalidArgumentError,
            r"states must have 3 units in the last dimension, got shape \(2, 4\)",
        ),
        (
            lambda: OperatorSet.singles(3)(torch.zeros(2, 3, dtype=torch.long)),
            InvalidTypeError,
            "states must be a floating tensor",
        ),
    ],
)
def test_bad_operator_sets(build, error, message):
    with pytest.raises(error, match=message):
        build()
