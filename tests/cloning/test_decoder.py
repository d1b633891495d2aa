import itertools

import pytest
import torch

from vulnscope.cloning.decoder import ConditionalDecoder
from vulnscope.cloning.reverse import ReverseModel
from vulnscope.errors import InvalidArgumentError, InvalidTypeError


def double_copy(decoder):
    """The decoder's network in float64, as an independent function of y."""
    net = decoder.net
    layers = [net[0], net[2], net[4]]
    params = [(layer.weight.detach().double(), layer.bias.detach().double()) for layer in layers]

    def logits(y):
        hidden = torch.tanh(y @ params[0][0].t() + params[0][1])
        hidden = torch.tanh(hidden @ params[1][0].t() + params[1][1])
        return hidden @ params[2][0].t() + params[2][1]

    return logits


def random_outputs(n, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, classes, generator=generator, dtype=torch.float64), -1)


def test_output_fisher_equals_the_fisher_of_the_enumerated_bernoulli_likelihood():
    decoder = ConditionalDecoder(4, (3,), hidden=6, seed=1)
    logits = double_copy(decoder)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    probs = random_outputs(3, 4, 0)
    fisher = decoder.output_fisher(probs)
    for row, y in enumerate(probs):

        def log_likelihood(v):
            z = logits(v)
            return states @ torch.nn.functional.logsigmoid(z) + (1 - states) @ (
                torch.nn.functional.logsigmoid(-z)
            )  # (8,) log q(x | v) for every binary x

        score = torch.autograd.functional.jacobian(log_likelihood, y)  # (8, C)
        q = log_likelihood(y).exp()
        torch.testing.assert_close(q.sum(), torch.tensor(1.0, dtype=torch.float64))
        expected = score.t() @ (q[:, None] * score)
        torch.testing.assert_close(fisher[row], expected, rtol=1e-10, atol=1e-14)


def test_output_fisher_equals_the_jacobian_formula_on_images():
    decoder = ConditionalDecoder(5, (1, 4, 4), hidden=16, seed=2)
    logits = double_copy(decoder)
    probs = random_outputs(4, 5, 1)
    fisher = decoder.output_fisher(probs)
    assert fisher.shape == (4, 5, 5) and fisher.dtype == torch.float64
    for row, y in enumerate(probs):
        jacobian = torch.autograd.functional.jacobian(logits, y)  # (16, 5)
        mean = torch.sigmoid(logits(y))
        expected = jacobian.t() @ torch.diag(mean * (1 - mean)) @ jacobian
        torch.testing.assert_close(fisher[row], expected, rtol=1e-10, atol=1e-14)
    values = torch.linalg.eigvalsh(fisher)
    assert torch.equal(fisher, fisher.transpose(1, 2))
    assert bool((values >= -1e-12 * values[:, -1:]).all()) and bool((values[:, -1] > 0).all())
    assert isinstance(decoder, ReverseModel) and decoder.num_classes == 5


def class_images(n, seed):
    """Grey-level 2x3 images whose mean depends on the class, and soft class outputs."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (n,), generator=generator)
    templates = torch.tensor(
        [
            [0.9, 0.9, 0.1, 0.1, 0.5, 0.2],
            [0.1, 0.8, 0.8, 0.2, 0.1, 0.9],
            [0.5, 0.1, 0.9, 0.9, 0.8, 0.1],
        ]
    )
    noise = 0.05 * torch.randn(n, 6, generator=generator)
    x = (templates[labels] + noise).clamp(0, 1).reshape(n, 1, 2, 3)
    logits = 3 * torch.nn.functional.one_hot(labels, 3).float() + torch.randn(
        n, 3, generator=generator
    )
    return x, torch.softmax(logits.double(), -1)


def test_fit_reduces_the_reconstruction_loss_and_is_reproducible():
    x, probs = class_images(120, 0)
    untrained = ConditionalDecoder(3, (1, 2, 3), hidden=16, seed=3)
    decoder = ConditionalDecoder.fit(x, probs, hidden=16, epochs=60, lr=1e-2, batch_size=32, seed=3)
    with torch.no_grad():
        before = float(untrained.loss(x, probs))
        after = float(decoder.loss(x, probs))
        floor = float(torch.nn.functional.binary_cross_entropy(x, x))  # the entropy of x
    assert after < before - 0.8 * (before - floor)
    assert not decoder.training and decoder(probs).shape == (120, 1, 2, 3)
    again = ConditionalDecoder.fit(x, probs, hidden=16, epochs=60, lr=1e-2, batch_size=32, seed=3)
    for a, b in zip(decoder.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    other = ConditionalDecoder.fit(x, probs, hidden=16, epochs=60, lr=1e-2, batch_size=32, seed=4)
    assert not torch.equal(other.net[0].weight, decoder.net[0].weight)
    torch.testing.assert_close(decoder.output_fisher(probs[:5]), again.output_fisher(probs[:5]))


def test_same_seed_same_initial_weights():
    a = ConditionalDecoder(3, (4,), hidden=5, seed=7)
    b = ConditionalDecoder(3, (4,), hidden=5, seed=7)
    c = ConditionalDecoder(3, (4,), hidden=5, seed=8)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)
    assert float(a.net[0].weight.detach().abs().max()) <= 1 / 3**0.5


def test_validation_messages():
    decoder = ConditionalDecoder(3, (4,), hidden=5)
    with pytest.raises(InvalidArgumentError, match=r"probs must have shape \(B, 3\).*\(2, 4\)"):
        decoder.output_fisher(torch.ones(2, 4) / 4)
    with pytest.raises(InvalidArgumentError, match="probs must be finite"):
        decoder.output_fisher(torch.tensor([[0.5, float("inf"), 0.5]]))
    with pytest.raises(InvalidTypeError, match=r"probs must be a floating torch\.Tensor"):
        decoder.output_fisher([[0.2, 0.3, 0.5]])
    with pytest.raises(InvalidArgumentError, match="num_classes must be an integer >= 2"):
        ConditionalDecoder(1, (4,))
    with pytest.raises(InvalidTypeError, match="input_shape must be a sequence"):
        ConditionalDecoder(3, 4)
    with pytest.raises(InvalidArgumentError, match=r"input_shape\[1\] must be an integer >= 1"):
        ConditionalDecoder(3, (4, 0))
    x, probs = class_images(10, 1)
    with pytest.raises(InvalidArgumentError, match="probs must have one row per input"):
        ConditionalDecoder.fit(x, probs[:9], epochs=1)
    with pytest.raises(InvalidArgumentError, match=r"x must lie inside bounds \[0.0, 1.0\]"):
        ConditionalDecoder.fit(2 * x + 0.5, probs, epochs=1)
    with pytest.raises(InvalidArgumentError, match=r"probs must have shape \(N, C\)"):
        ConditionalDecoder.fit(x, probs[:, 0], epochs=1)
    with pytest.raises(InvalidArgumentError, match="lr must be > 0"):
        ConditionalDecoder.fit(x, probs, lr=0.0)
