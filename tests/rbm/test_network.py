"""DeepRBM: sampled, exact and mean-field passes against each other and against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import save_file

from vulnscope.errors import DataError, InvalidArgumentError, InvalidTypeError, MissingFileError
from vulnscope.rbm import DeepRBM, binary_states
from vulnscope.rbm.serialization import load_deep_rbm, save_deep_rbm


def random_network(widths, classes, *, seed=0, scale=1.0, dtype=torch.float64) -> DeepRBM:
    """A DeepRBM with every weight and bias ~ N(0, scale²)."""
    net = DeepRBM(widths, classes, seed=seed).to(dtype)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(scale * torch.randn(param.shape, generator=generator, dtype=dtype))
    return net


def binary_inputs(batch, width, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (batch, width), generator=generator).to(dtype)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bernoulli_transition(rbm, target, source) -> float:
    """t(h = target | v = source) = Π_j σ(f_j)^h_j (1 - σ(f_j))^(1 - h_j), f = W v + a."""
    w, a = rbm.weight.tolist(), rbm.hidden_bias.tolist()
    prob = 1.0
    for j, h in enumerate(target):
        p = sigmoid(sum(w[j][i] * v for i, v in enumerate(source)) + a[j])
        prob *= p if h else 1 - p
    return prob


def softmax_transition(rbm, source) -> list[float]:
    w, a = rbm.weight.tolist(), rbm.hidden_bias.tolist()
    fields = [sum(w[c][i] * v for i, v in enumerate(source)) + a[c] for c in range(len(a))]
    top = max(fields)
    exps = [math.exp(f - top) for f in fields]
    return [e / sum(exps) for e in exps]


def state_index(state) -> int:
    """Bit j of the index is unit j (the order of binary_states)."""
    return sum(int(bit) << j for j, bit in enumerate(state))


# --- exact pass against brute force ------------------------------------------------------


@pytest.mark.parametrize(("widths", "classes"), [([5, 3, 2], 3), ([4, 2, 3], 2)])
def test_exact_up_matches_a_brute_force_sum_over_joint_hidden_states(widths, classes):
    net = random_network(widths, classes, seed=len(widths) + classes)
    rbm1, rbm2, top = net.rbms
    x = binary_inputs(3, widths[0], seed=1)
    with torch.no_grad():
        dists = net.exact_up(x)
    assert [tuple(d.shape) for d in dists] == [
        (3, 2 ** widths[1]),
        (3, 2 ** widths[2]),
        (3, classes),
    ]
    for b, row in enumerate(x.tolist()):
        q1 = [0.0] * 2 ** widths[1]
        q2 = [0.0] * 2 ** widths[2]
        q3 = [0.0] * classes
        for h1 in itertools.product((0, 1), repeat=widths[1]):
            t1 = bernoulli_transition(rbm1, h1, row)
            q1[state_index(h1)] += t1
            for h2 in itertools.product((0, 1), repeat=widths[2]):
                joint = t1 * bernoulli_transition(rbm2, h2, h1)
                q2[state_index(h2)] += joint
                for c, p in enumerate(softmax_transition(top, h2)):
                    q3[c] += joint * p
        for got, expected in zip(dists, (q1, q2, q3), strict=True):
            torch.testing.assert_close(
                got[b], torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
            )
        assert float(dists[-1][b].sum()) == pytest.approx(1.0, abs=1e-12)


def test_exact_down_matches_a_brute_force_sum():
    widths, classes = [4, 3], 3
    net = random_network(widths, classes, seed=7)
    bottom, top = net.rbms
    w_top, b_top = top.weight.tolist(), top.visible_bias.tolist()
    w_bot, b_bot = bottom.weight.tolist(), bottom.visible_bias.tolist()
    dists = net.exact_down(torch.arange(classes))
    assert [tuple(d.shape) for d in dists] == [(classes, 8), (classes, 16)]
    for c in range(classes):
        q_h = [0.0] * 8
        q_x = [0.0] * 16
        for h in itertools.product((0, 1), repeat=3):
            # t(h | y = c) = Π_i Bernoulli(σ(w_top[c, i] + b_top[i]))
            p_h = math.prod(
                sigmoid(w_top[c][i] + b_top[i]) if h[i] else 1 - sigmoid(w_top[c][i] + b_top[i])
                for i in range(3)
            )
            q_h[state_index(h)] += p_h
            for x in itertools.product((0, 1), repeat=4):
                fields = [sum(w_bot[j][i] * h[j] for j in range(3)) + b_bot[i] for i in range(4)]
                p_x = math.prod(
                    sigmoid(f) if bit else 1 - sigmoid(f) for f, bit in zip(fields, x, strict=True)
                )
                q_x[state_index(x)] += p_h * p_x
        torch.testing.assert_close(dists[0][c], torch.tensor(q_h, dtype=torch.float64))
        torch.testing.assert_close(dists[1][c], torch.tensor(q_x, dtype=torch.float64))


def test_exact_down_puts_a_real_label_vector_in_the_field():
    """A soft y is not the mixture of the one-hot passes: it enters W_Nᵀ y + b_N (eq. 23)."""
    net = random_network([4, 3, 3], 3, seed=8)
    y = torch.tensor([[0.2, 0.5, 0.3], [1.0, -0.5, 0.5]], dtype=torch.float64)
    top = net.rbms[-1]
    field = (y @ top.weight.double() + top.visible_bias.double()).tolist()
    got = net.exact_down(y)[0].detach()
    for b in range(2):
        for h in itertools.product((0, 1), repeat=3):
            expected = math.prod(
                sigmoid(f) if bit else 1 - sigmoid(f) for f, bit in zip(field[b], h, strict=True)
            )
            assert float(got[b, state_index(h)]) == pytest.approx(expected, rel=1e-12)
    mixture = y @ net.exact_down(torch.arange(3))[0].detach()
    assert float((got - mixture).abs().max()) > 1e-3


# --- sampled pass against the exact pass ------------------------------------------------


def test_sampled_classification_agrees_with_exact():
    net = random_network([6, 4, 3], 3, seed=1)
    x = binary_inputs(4, 6, seed=2)
    chains = 100_000
    net.requires_grad_(False)
    exact = net.classify(x, method="exact")
    sampled = net.classify(x, method="sample", chains=chains, seed=3)
    # the Rao-Blackwellised estimate has at most the binomial variance p(1 - p) / S
    std = (exact * (1 - exact) / chains).sqrt()
    assert bool(((sampled - exact).abs() <= 5 * std + 1e-9).all()), (sampled, exact)
    torch.testing.assert_close(sampled.sum(-1), torch.ones(4, dtype=torch.float64))
    # and the network is far from its mean-field pass here, so the check has teeth
    assert float((net.classify(x, method="mean_field") - exact).abs().max()) > 20 * float(std.max())


def test_sampled_hidden_states_follow_the_exact_marginals():
    net = random_network([5, 3, 3], 2, seed=4)
    x = binary_inputs(2, 5, seed=5)
    chains = 60_000
    run = net.sample_up(x, chains=chains, seed=6)
    assert [tuple(s.shape) for s in run.states] == [
        (2, chains, 5),
        (2, chains, 3),
        (2, chains, 3),
        (2, chains, 2),
    ]
    assert bool((run.states[-1].sum(-1) == 1).all())
    exact = net.exact_up(x)
    for layer in (1, 2):
        states = run.states[layer]
        index = (states * 2 ** torch.arange(3, dtype=states.dtype)).sum(-1).long()
        counts = torch.stack([torch.bincount(index[b], minlength=8) for b in range(2)])
        frequency = counts.double() / chains
        q = exact[layer - 1]
        std = (q * (1 - q) / chains).sqrt()
        assert bool(((frequency - q).abs() <= 5 * std + 1e-9).all()), (layer, frequency, q)
    labels = run.states[-1].mean(1)
    std = (exact[-1] * (1 - exact[-1]) / chains).sqrt()
    assert bool(((labels - exact[-1]).abs() <= 5 * std + 1e-9).all())


@pytest.mark.parametrize("soft", [False, True])
def test_generate_agrees_with_exact_down(soft: bool):
    net = random_network([6, 4, 3], 3, seed=9)
    chains = 100_000
    soft_y = torch.tensor([[0.6, 0.1, 0.3], [0.2, 0.2, 0.6], [0.0, 1.0, 0.0]])
    y = soft_y if soft else torch.arange(3)
    sampled = net.generate(y, chains=chains, seed=1)
    marginals = net.exact_down(y)[-1] @ binary_states(6, dtype=torch.float64)
    std = (marginals * (1 - marginals) / chains).sqrt()
    assert sampled.shape == (3, 6)
    assert bool(((sampled - marginals).abs() <= 5 * std + 1e-9).all()), (sampled, marginals)


def test_sample_down_states_and_reproducibility():
    net = random_network([4, 3], 2, seed=10)
    run = net.sample_down(torch.tensor([0, 1]), chains=5, seed=2)
    assert [tuple(s.shape) for s in run.states] == [(2, 5, 2), (2, 5, 3), (2, 5, 4)]
    assert torch.equal(run.states[0][0], torch.tensor([[1.0, 0.0]] * 5, dtype=torch.float64))
    again = net.sample_down(torch.tensor([0, 1]), chains=5, seed=2)
    for first, second in zip(run.states, again.states, strict=True):
        assert torch.equal(first, second)
    for state in run.states[1:]:
        assert bool(((state == 0) | (state == 1)).all())


# --- mean field --------------------------------------------------------------------------


def test_mean_field_equals_exact_for_a_single_softmax_layer():
    net = random_network([6], 4, seed=11)
    x = binary_inputs(5, 6, seed=3)
    (top,) = net.rbms
    expected = torch.stack([torch.tensor(softmax_transition(top, row)) for row in x.tolist()])
    torch.testing.assert_close(net.classify(x, method="exact"), expected.double())
    torch.testing.assert_close(net.classify(x, method="mean_field"), expected.double())
    # and any chains give the same answer: nothing random remains at depth 1
    torch.testing.assert_close(net.classify(x, method="sample", chains=3), expected.double())


def test_forward_is_the_log_of_the_mean_field_pass():
    net = random_network([6, 4, 3], 3, seed=12)
    x = torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = x.reshape(5, 6)
    activity = flat
    for rbm in net.rbms[:-1]:
        activity = torch.sigmoid(activity @ rbm.weight.t() + rbm.hidden_bias)
    top = net.rbms[-1]
    expected = torch.softmax(activity @ top.weight.t() + top.hidden_bias, -1)
    torch.testing.assert_close(net.classify(x, method="mean_field"), expected)
    torch.testing.assert_close(net(x), expected.log())
    mean_field = net.mean_field(x)
    assert [tuple(m.shape) for m in mean_field] == [(5, 6), (5, 4), (5, 3), (5, 3)]
    torch.testing.assert_close(mean_field[-2], activity)


def test_straight_through_samples_are_binary_and_carry_gradients():
    net = random_network([6, 4, 3], 3, seed=13, dtype=torch.float32)
    x = binary_inputs(4, 6, seed=4, dtype=torch.float32)
    run = net.sample_up(x, chains=16, seed=5, straight_through=True)
    for state in run.states[1:]:
        assert torch.allclose(state.detach(), state.detach().round(), atol=1e-6)
        assert bool(((state.detach().round() == 0) | (state.detach().round() == 1)).all())
    run.end_probs[..., 0].mean().backward()
    for rbm in net.rbms:
        assert rbm.weight.grad is not None
        assert float(rbm.weight.grad.abs().sum()) > 0
    # the same samples without the estimator: no gradient reaches the layers below the top
    net.zero_grad(set_to_none=True)
    plain = net.sample_up(x, chains=16, seed=5)
    for with_st, without in zip(run.states, plain.states, strict=True):
        assert torch.allclose(with_st.detach(), without, atol=1e-6)
    plain.end_probs[..., 0].mean().backward()
    assert net.rbms[0].weight.grad is None
    assert net.rbms[-1].weight.grad is not None


# check_inputs reads float(x.min()) on an input that requires grad: torch warns, harmlessly
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True")
def test_exact_up_is_differentiable_in_the_input():
    net = random_network([4, 3], 2, seed=14)
    x = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: net.exact_up(inp)[-1], (x,))


# --- serialization -----------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    net = random_network([6, 4, 3], 3, seed=15, dtype=torch.float32)
    path = save_deep_rbm(net, tmp_path / "net.safetensors", metadata={"recipe": "test"})
    loaded = load_deep_rbm(path)
    assert not loaded.training
    assert loaded.widths == [6, 4, 3] and loaded.num_classes == 3
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = binary_inputs(5, 6, seed=6, dtype=torch.float32)
    assert torch.equal(loaded(x), net(x))
    assert torch.equal(loaded.classify(x, method="exact"), net.classify(x, method="exact"))
    assert torch.equal(loaded.classify(x, chains=32, seed=1), net.classify(x, chains=32, seed=1))


def test_load_rejects_foreign_and_garbage_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(DataError, match="not a deep RBM saved by vulnscope"):
        load_deep_rbm(foreign)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_deep_rbm(garbage)
    with pytest.raises(MissingFileError, match="does not exist"):
        load_deep_rbm(tmp_path / "missing.safetensors")


def test_load_rejects_an_inconsistent_header(tmp_path):
    net = random_network([6, 4], 3, seed=16, dtype=torch.float32)
    state = {key: value.detach().contiguous() for key, value in net.state_dict().items()}
    path = tmp_path / "wrong.safetensors"
    header = {"format": "vulnscope.DeepRBM/1", "widths": "[6, 5]", "num_classes": "3"}
    save_file(state, str(path), metadata=header)
    with pytest.raises(DataError, match="inconsistent deep RBM"):
        load_deep_rbm(path)


# --- bad input ---------------------------------------------------------------------------


def test_exact_passes_refuse_layers_wider_than_16():
    wide = DeepRBM([4, 17], 2, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"at most 16 units.*got a layer of 17"):
        wide.exact_up(torch.zeros(1, 4))
    wide_input = DeepRBM([17, 3], 2, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"at most 16 units.*got a layer of 17"):
        wide_input.exact_down(torch.tensor([0]))
    # the sampled pass still works
    assert wide.classify(torch.zeros(1, 4), chains=4).shape == (1, 2)


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(2, 5), InvalidArgumentError, r"x must hold 6 values per sample.*\(2, 5\)"),
        (torch.zeros(6), InvalidArgumentError, r"x must have shape \(N, \.\.\.\)"),
        (torch.full((2, 6), math.nan), InvalidArgumentError, "x must be finite"),
        (torch.zeros(2, 6, dtype=torch.long), InvalidTypeError, "floating dtype"),
        ([[0.0] * 6], InvalidTypeError, "x must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("method", ["sample", "exact", "mean_field"])
def test_classify_rejects_bad_inputs(x, error, message, method):
    net = DeepRBM([6, 4], 3, seed=0)
    with pytest.raises(error, match=message):
        net.classify(x, method=method)


@pytest.mark.parametrize(
    ("y", "error", "message"),
    [
        (torch.tensor([0, 3]), InvalidArgumentError, r"class indices in \[0, 2\].*\[0, 3\]"),
        (torch.tensor([-1]), InvalidArgumentError, r"class indices in \[0, 2\]"),
        (torch.zeros(2, 4), InvalidArgumentError, r"\(B,\) class indices or \(B, 3\) label"),
        (torch.zeros(2, 3, dtype=torch.long), InvalidArgumentError, r"\(B, 3\) label vectors"),
        (torch.full((1, 3), math.nan), InvalidArgumentError, "y must be finite"),
        ([0, 1], InvalidTypeError, "y must be a torch.Tensor of labels"),
    ],
)
@pytest.mark.parametrize("pass_name", ["sample_down", "exact_down", "generate"])
def test_generation_passes_reject_bad_labels(y, error, message, pass_name):
    net = DeepRBM([6, 4], 3, seed=0)
    with pytest.raises(error, match=message):
        getattr(net, pass_name)(y)


def test_bad_construction_and_options():
    with pytest.raises(InvalidTypeError, match="widths must be a sequence"):
        DeepRBM(6, 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="at least the input size"):
        DeepRBM([], 3)
    with pytest.raises(InvalidArgumentError, match=r"widths\[1\] must be an integer >= 1"):
        DeepRBM([6, 0], 3)
    with pytest.raises(InvalidArgumentError, match="num_classes must be an integer >= 2"):
        DeepRBM([6], 1)
    net = DeepRBM([6, 4], 3, seed=0)
    with pytest.raises(InvalidArgumentError, match="method must be one of"):
        net.classify(torch.zeros(1, 6), method="gibbs")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="chains must be an integer >= 1, got 0"):
        net.classify(torch.zeros(1, 6), chains=0)
