from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.exact import binary_states
from vulnscope.rbm.layerwise import (
    LayerwiseResult,
    _train_layer,
    layer_pairs,
    pair_objective,
    train_layerwise_kl,
)
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.rbm import RBM
from vulnscope.rbm.training import greedy_pretrain


def _exact_kl(rbm: RBM, visible: torch.Tensor, hidden: torch.Tensor) -> float:
    """KL(empirical pairs || t) by enumerating every joint state of a tiny RBM."""
    v_states = binary_states(rbm.n_visible, dtype=torch.float64)
    if rbm.hidden == "softmax":
        h_states = torch.eye(rbm.n_hidden, dtype=torch.float64)
    else:
        h_states = binary_states(rbm.n_hidden, dtype=torch.float64)
    weight = rbm.weight.detach().double()
    a, b = rbm.hidden_bias.detach().double(), rbm.visible_bias.detach().double()
    log_t = h_states @ weight @ v_states.t() + (h_states @ a)[:, None] + (v_states @ b)[None]
    log_t = log_t - log_t.logsumexp((0, 1))  # (H, V)
    # empirical P(h, v): hidden rows are probabilities of independent units (or one-hot)
    v_index = (visible.double() * 2 ** torch.arange(rbm.n_visible)).sum(1).long()
    h = hidden.double()
    if rbm.hidden == "softmax":
        h_probs = h
    else:
        h_probs = (h_states[None] * h[:, None] + (1 - h_states[None]) * (1 - h[:, None])).prod(-1)
    empirical = torch.zeros_like(log_t)
    empirical.index_add_(1, v_index, h_probs.t())
    empirical /= visible.shape[0]
    mask = empirical > 0
    return float((empirical[mask] * (empirical[mask].log() - log_t[mask])).sum())


def _toy_data(n: int = 120, width: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=gen)
    means = torch.tensor([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.7]])[:, :width]
    x = (torch.rand(n, width, generator=gen) < means[y]).float()
    return x, y


@pytest.mark.parametrize("hidden", ["bernoulli", "softmax"])
def test_layer_update_lowers_exact_kl_to_the_pairs(hidden: str) -> None:
    torch.manual_seed(0)
    x, y = _toy_data()
    rbm = RBM(
        4,
        3 if hidden == "bernoulli" else 2,
        hidden=hidden,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(1),
    )
    if hidden == "softmax":
        targets = functional.one_hot(y, 2).float()
    else:  # probabilities of hidden units that depend on the label only, as in eq. 14
        targets = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.7, 0.5]])[y]
    before = _exact_kl(rbm, x, targets)
    _train_layer(
        rbm,
        lambda: (x, targets),
        objective="joint",
        epochs=30,
        batch_size=20,
        lr=0.05,
        k=1,
        persistent=True,
        chains=40,
        momentum=0.5,
        weight_decay=0.0,
        generator=torch.Generator().manual_seed(2),
    )
    after = _exact_kl(rbm, x, targets)
    assert after < 0.8 * before, (before, after)


def test_pairs_have_the_eq14_structure() -> None:
    x, y = _toy_data()
    net = DeepRBM([4, 3], 2, seed=0)
    gen = torch.Generator().manual_seed(0)
    visible, hidden = layer_pairs(net, x, y, 1, gen)  # top layer: (h_1 up from x, one-hot y)
    assert visible.shape == (120, 3) and set(visible.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hidden, functional.one_hot(y, 2).float())
    visible, hidden = layer_pairs(net, x, y, 0, gen)  # bottom: (x, E[h_1 | y] downward)
    assert torch.equal(visible, x)
    expected = net.rbms[1].visible_probs(functional.one_hot(y, 2).float())
    assert torch.allclose(hidden, expected)
    assert pair_objective(net.rbms[0], visible, hidden) > 0


def test_same_seed_same_weights_and_different_seed_differs() -> None:
    x, y = _toy_data()

    def run(seed: int) -> tuple[DeepRBM, LayerwiseResult]:
        net = DeepRBM([4, 3], 2, seed=0)
        result = train_layerwise_kl(
            net, x, y, sweeps=2, epochs_per_layer=2, seed=seed, tolerance=0.0
        )
        return net, result

    (first, r1), (second, r2), (third, _) = run(3), run(3), run(4)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)
    assert r1 == r2
    assert any(
        not torch.equal(p, q) for p, q in zip(first.parameters(), third.parameters(), strict=True)
    )
    assert r1.sweeps_run == 2 and len(r1.objective) == 2 and len(r1.objective[0]) == 2
    assert len(r1.train_accuracy) == 3 and all(math.isfinite(v) for v in r1.objective[1])


def test_conditional_variant_leaves_visible_bias_and_joint_moves_it() -> None:
    x, y = _toy_data()
    net = DeepRBM([4, 3], 2, seed=0)
    biases = [rbm.visible_bias.detach().clone() for rbm in net.rbms]
    train_layerwise_kl(net, x, y, sweeps=1, epochs_per_layer=2, objective="conditional")
    assert all(torch.equal(b, rbm.visible_bias) for b, rbm in zip(biases, net.rbms, strict=True))
    train_layerwise_kl(net, x, y, sweeps=1, epochs_per_layer=2, objective="joint")
    assert not torch.equal(biases[0], net.rbms[0].visible_bias)


def test_restore_best_returns_the_best_monitored_sweep() -> None:
    x, y = _toy_data()
    net = DeepRBM([4, 3], 2, seed=0)
    result = train_layerwise_kl(
        net, x, y, sweeps=3, epochs_per_layer=1, restore_best=True, tolerance=0.0
    )
    assert result.restored_best
    assert result.train_accuracy[result.best_sweep] == max(result.train_accuracy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sweeps": 0}, "sweeps must be an integer >= 1, got 0"),
        ({"lr": -0.1}, "lr must be > 0.0, got -0.1"),
        ({"k": 1.5}, "k must be an integer"),
        ({"chains": 0}, "chains must be an integer >= 1, got 0"),
        ({"tolerance": -1}, "tolerance must be >= 0.0"),
        ({"objective": "kl"}, "objective must be one of ['joint', 'conditional'], got 'kl'"),
        ({"order": "random"}, "order must be one of ['top_down', 'bottom_up']"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": None}, "seed must be a non-negative integer (not None)"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"persistent": 1}, "persistent must be True or False"),
    ],
)
def test_bad_arguments_raise_with_the_argument_named(
    kwargs: dict[str, object], message: str
) -> None:
    x, y = _toy_data()
    with pytest.raises((InvalidArgumentError, InvalidTypeError)) as info:
        train_layerwise_kl(DeepRBM([4, 3], 2), x, y, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_bad_data_raise() -> None:
    x, y = _toy_data()
    net = DeepRBM([4, 3], 2)
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(120,\)"):
        train_layerwise_kl(net, x, y[:5])
    with pytest.raises(
        InvalidArgumentError,
        match=r"y must hold class indices < 2 \(the model has 2 outputs\), got maximum 2",
    ):
        train_layerwise_kl(net, x, y + 1)
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(120, 2\) \(probability"):
        train_layerwise_kl(net, x, y.float())
    with pytest.raises(InvalidArgumentError, match="y must hold probability vectors"):
        train_layerwise_kl(net, x, torch.full((120, 2), 0.7))
    with pytest.raises(InvalidArgumentError, match=r"x must lie inside bounds \[0.0, 1.0\]"):
        train_layerwise_kl(net, x * 2, y)
    with pytest.raises(InvalidTypeError, match="network must be a DeepRBM"):
        train_layerwise_kl("net", x, y)  # type: ignore[arg-type]


def test_digits_joint_training_keeps_the_sampled_pass_classifying() -> None:
    from vulnscope.rbm.pretrained import binarized_digits

    train, test = binarized_digits("train"), binarized_digits("test")
    net = DeepRBM([64, 64, 64], 10, seed=0)
    greedy_pretrain(net, train.x, train.y, epochs=6, seed=0)

    def accuracy() -> float:
        probs = net.classify(test.x, method="sample", chains=64, seed=0)
        return float((probs.argmax(1) == test.y).double().mean())

    base = accuracy()
    result = train_layerwise_kl(
        net, train.x, train.y, sweeps=1, epochs_per_layer=3, monitor_chains=4
    )
    after = accuracy()
    assert base > 0.45, base
    assert after > 0.4, (base, after)  # chance is 0.1; a sign error or a lost label drops it
    assert result.objective[0][0] < result.initial_objective[0]


def test_one_hot_targets_train_exactly_like_labels() -> None:
    """Probability targets are the labels' one-hot vectors: the same seed gives the same net."""
    x, y = _toy_data()
    by_label, by_vector = DeepRBM([4, 3], 2, seed=3), DeepRBM([4, 3], 2, seed=3)
    one_hot = torch.nn.functional.one_hot(y, 2).float()
    first = train_layerwise_kl(by_label, x, y, sweeps=1, epochs_per_layer=2, seed=5)
    second = train_layerwise_kl(by_vector, x, one_hot, sweeps=1, epochs_per_layer=2, seed=5)
    assert first.train_accuracy == second.train_accuracy
    for a, b in zip(by_label.parameters(), by_vector.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_soft_targets_change_the_generation_pairs() -> None:
    """A soft label vector starts the generation pass: the top layer's targets are the vector."""
    x, _y = _toy_data()
    net = DeepRBM([4, 3], 2, seed=0)
    soft = torch.tensor([[0.8, 0.2]]).expand(x.shape[0], -1).contiguous()
    _, hidden = layer_pairs(net, x.reshape(x.shape[0], -1), soft, 1, torch.Generator())
    torch.testing.assert_close(hidden, soft)
