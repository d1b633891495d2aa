"""One RBM: conditionals, free energy and samplers against brute-force enumeration; CD/PCD."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm import RBM
from vulnscope.rbm.rbm import sample_bernoulli, sample_categorical
from vulnscope.rbm.training import train_rbm


def random_rbm(n_visible: int, n_hidden: int, *, hidden: str = "bernoulli", seed: int = 0) -> RBM:
    """An RBM in float64 with every parameter ~ N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden, hidden=hidden).double()
    with torch.no_grad():
        for param in rbm.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return rbm


def all_states(n: int) -> list[tuple[int, ...]]:
    return list(itertools.product((0, 1), repeat=n))


def hidden_states(n_hidden: int, hidden: str) -> list[tuple[int, ...]]:
    if hidden == "softmax":
        return [tuple(int(i == j) for i in range(n_hidden)) for j in range(n_hidden)]
    return all_states(n_hidden)


def joint_weight(rbm: RBM, h: tuple[int, ...], v: tuple[int, ...]) -> float:
    """exp(hᵀ W v + aᵀ h + bᵀ v), one python sum at a time."""
    w, a, b = rbm.weight.tolist(), rbm.hidden_bias.tolist(), rbm.visible_bias.tolist()
    exponent = sum(h[j] * w[j][i] * v[i] for j in range(len(h)) for i in range(len(v)))
    exponent += sum(a[j] * h[j] for j in range(len(h))) + sum(b[i] * v[i] for i in range(len(v)))
    return math.exp(exponent)


@pytest.mark.parametrize(
    ("n_visible", "n_hidden", "hidden", "seed"),
    [
        (3, 2, "bernoulli", 0),
        (4, 3, "bernoulli", 1),
        (2, 4, "bernoulli", 2),
        (3, 4, "softmax", 3),
        (4, 2, "softmax", 4),
    ],
)
def test_conditionals_and_free_energy_match_enumeration(n_visible, n_hidden, hidden, seed):
    rbm = random_rbm(n_visible, n_hidden, hidden=hidden, seed=seed)
    vs, hs = all_states(n_visible), hidden_states(n_hidden, hidden)
    v_tensor = torch.tensor(vs, dtype=torch.float64)
    h_tensor = torch.tensor(hs, dtype=torch.float64)
    joint = torch.tensor([[joint_weight(rbm, h, v) for h in hs] for v in vs], dtype=torch.float64)

    with torch.no_grad():
        # t(h_j = 1 | v) = Σ_h h_j p(h, v) / Σ_h p(h, v)
        expected_hidden = (joint @ h_tensor) / joint.sum(1, keepdim=True)
        torch.testing.assert_close(
            rbm.hidden_probs(v_tensor), expected_hidden, rtol=1e-12, atol=1e-12
        )
        # t(v_i = 1 | h) = Σ_v v_i p(h, v) / Σ_v p(h, v)
        expected_visible = (joint.t() @ v_tensor) / joint.sum(0)[:, None]
        torch.testing.assert_close(
            rbm.visible_probs(h_tensor), expected_visible, rtol=1e-12, atol=1e-12
        )
        # log t(h | v) for every pair
        expected_log = (joint / joint.sum(1, keepdim=True)).log()
        torch.testing.assert_close(
            rbm.log_hidden_conditional(h_tensor, v_tensor), expected_log, rtol=1e-10, atol=1e-10
        )
        # F(v) = -log Σ_h exp(...)
        torch.testing.assert_close(
            rbm.free_energy(v_tensor), -joint.sum(1).log(), rtol=1e-12, atol=1e-12
        )
        # E(v, h) on matching pairs
        pairs = list(itertools.product(range(len(vs)), range(len(hs))))
        v_pair = v_tensor[[i for i, _ in pairs]]
        h_pair = h_tensor[[j for _, j in pairs]]
        expected_energy = torch.tensor(
            [-math.log(joint[i, j]) for i, j in pairs], dtype=torch.float64
        )
        torch.testing.assert_close(
            rbm.energy(v_pair, h_pair), expected_energy, rtol=1e-12, atol=1e-12
        )


def test_softmax_hidden_samples_are_one_hot_and_bernoulli_binary():
    generator = torch.Generator().manual_seed(0)
    v = torch.randint(0, 2, (500, 4), generator=generator).double()
    softmax = random_rbm(4, 3, hidden="softmax", seed=5)
    sample = softmax.sample_hidden(v, generator)
    assert sample.shape == (500, 3)
    assert bool(((sample == 0) | (sample == 1)).all())
    assert bool((sample.sum(-1) == 1).all())
    binary = random_rbm(4, 3, seed=6)
    for drawn in (binary.sample_hidden(v, generator), binary.sample_visible(sample, generator)):
        assert bool(((drawn == 0) | (drawn == 1)).all())


def test_sample_bernoulli_frequencies():
    n = 200_000
    probs = torch.tensor([0.0, 0.02, 0.3, 0.5, 0.77, 1.0], dtype=torch.float64)
    draws = sample_bernoulli(probs.expand(n, -1), torch.Generator().manual_seed(1))
    assert draws.dtype == torch.float64
    frequency = draws.mean(0)
    std = (probs * (1 - probs) / n).sqrt()
    assert float(frequency[0]) == 0.0
    assert float(frequency[-1]) == 1.0
    assert bool(((frequency - probs).abs() <= 5 * std + 1e-12).all()), (frequency, probs)


def test_sample_bernoulli_same_generator_state_same_draws():
    probs = torch.full((100,), 0.5)
    first = sample_bernoulli(probs, torch.Generator().manual_seed(3))
    second = sample_bernoulli(probs, torch.Generator().manual_seed(3))
    third = sample_bernoulli(probs, torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_sample_categorical_frequencies_batched():
    n = 100_000
    probs = torch.tensor(
        [[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.05, 0.95]],
        dtype=torch.float64,
    )
    # a leading (n, 3) batch: the sampler must work on any leading shape
    draws = sample_categorical(probs.expand(n, -1, -1), torch.Generator().manual_seed(2))
    assert draws.shape == (n, 3, 4)
    assert bool((draws.sum(-1) == 1).all())
    frequency = draws.mean(0)
    std = (probs * (1 - probs) / n).sqrt()
    assert bool((frequency[probs == 0] == 0).all())
    assert bool(((frequency - probs).abs() <= 5 * std + 1e-12).all()), (frequency, probs)


def test_sample_categorical_never_draws_a_leading_zero_probability_category(monkeypatch):
    # torch.rand may return exactly 0 (probability 2**-24 in float32); a category of
    # probability zero must still never be drawn
    probs = torch.tensor([[0.0, 0.4, 0.6], [0.0, 0.0, 1.0]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.zeros(shape))
    draws = sample_categorical(probs)
    assert draws.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


# --- training -------------------------------------------------------------------------


def exact_log_likelihood(rbm: RBM, data: torch.Tensor) -> float:
    """Mean log p(v) over the data, the partition function enumerated over all 2**(n+m) states."""
    vs, hs = all_states(rbm.n_visible), all_states(rbm.n_hidden)
    with torch.no_grad():
        unnormalised = {v: sum(joint_weight(rbm, h, v) for h in hs) for v in vs}
    log_z = math.log(sum(unnormalised.values()))
    rows = [tuple(int(x) for x in row) for row in data.tolist()]
    return sum(math.log(unnormalised[row]) for row in rows) / len(rows) - log_z


def tiny_data() -> torch.Tensor:
    patterns = torch.tensor(
        [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]], dtype=torch.float32
    )
    return patterns.repeat(16, 1)


def fresh_rbm(seed: int = 0) -> RBM:
    return RBM(4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("persistent", [False, True])
def test_cd_and_pcd_increase_the_exact_log_likelihood(persistent):
    data = tiny_data()
    rbm = fresh_rbm()
    before = exact_log_likelihood(rbm, data)
    # the initial weights are 0.01-scale: close to uniform over 16 visible states
    assert before == pytest.approx(-4 * math.log(2), abs=0.05)
    train_rbm(rbm, data, epochs=150, batch_size=16, lr=0.3, persistent=persistent, seed=0)
    after = exact_log_likelihood(rbm, data)
    # the data's entropy is log 4: the best model reaches -log 4 = -1.386 from -2.773
    assert after > before + 0.8, (before, after)
    assert after <= -math.log(4) + 1e-9


def test_train_rbm_is_deterministic_in_its_seed():
    data = tiny_data()
    first = train_rbm(fresh_rbm(), data, epochs=5, batch_size=8, seed=7)
    second = train_rbm(fresh_rbm(), data, epochs=5, batch_size=8, seed=7)
    third = train_rbm(fresh_rbm(), data, epochs=5, batch_size=8, seed=8)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.weight, third.weight)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (torch.zeros(8, 3), {}, InvalidArgumentError, r"data must have shape \(S, 4\).*\(8, 3\)"),
        (torch.zeros(8), {}, InvalidArgumentError, r"data must have shape \(N, \.\.\.\)"),
        (torch.zeros(0, 4), {}, InvalidArgumentError, "data must hold at least one sample"),
        (
            torch.full((8, 4), 1.5),
            {},
            InvalidArgumentError,
            r"data must lie inside bounds \[0.0, 1.0\]",
        ),
        (torch.full((8, 4), -0.1), {}, InvalidArgumentError, r"got values in \[-0.1, -0.1\]"),
        (torch.full((8, 4), math.nan), {}, InvalidArgumentError, "data must be finite, got 32 NaN"),
        (
            torch.zeros(8, 4, dtype=torch.long),
            {},
            InvalidTypeError,
            "data must have a floating dtype",
        ),
        ([[0.0] * 4], {}, InvalidTypeError, "data must be a torch.Tensor"),
        (torch.zeros(8, 4), {"k": 0}, InvalidArgumentError, "k must be an integer >= 1, got 0"),
        (torch.zeros(8, 4), {"k": 1.5}, InvalidTypeError, "k must be an integer"),
        (torch.zeros(8, 4), {"lr": 0.0}, InvalidArgumentError, r"lr must be > 0\.0"),
        (torch.zeros(8, 4), {"lr": -1.0}, InvalidArgumentError, r"lr must be > 0\.0"),
        (torch.zeros(8, 4), {"lr": "fast"}, InvalidTypeError, "lr must be a real number"),
        (torch.zeros(8, 4), {"lr": math.inf}, InvalidArgumentError, "lr must be finite"),
        (torch.zeros(8, 4), {"epochs": 0}, InvalidArgumentError, "epochs must be an integer >= 1"),
        (torch.zeros(8, 4), {"momentum": -0.5}, InvalidArgumentError, "momentum must be >= 0"),
        (torch.zeros(8, 4), {"persistent": 1}, InvalidTypeError, "persistent must be True or"),
    ],
)
def test_train_rbm_rejects_bad_input(data, kwargs, error, message):
    rbm = fresh_rbm()
    before = rbm.weight.detach().clone()
    with pytest.raises(error, match=message):
        train_rbm(rbm, data, **kwargs)
    assert torch.equal(rbm.weight, before)


def test_rbm_rejects_bad_construction():
    with pytest.raises(InvalidArgumentError, match="n_visible must be an integer >= 1, got 0"):
        RBM(0, 3)
    with pytest.raises(InvalidArgumentError, match="n_hidden must be an integer >= 2, got 1"):
        RBM(3, 1, hidden="softmax")
    with pytest.raises(InvalidArgumentError, match="hidden must be one of"):
        RBM(3, 2, hidden="gaussian")  # type: ignore[arg-type]
