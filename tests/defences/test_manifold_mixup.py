from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import stats
from torch import nn

from vulnscope.data import load_digits
from vulnscope.defences.mixup import ManifoldMixup, MixupDraw, beta_quantile
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.models import train_classifier


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)
    ).double()


def _batch(seed=0, n=7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 2, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=generator)
    return x, y


def _hooks(model):
    return sum(len(module._forward_hooks) for module in model.modules())


def _hand_loss(logits, y, lam, permutation):
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[permutation])


def test_default_layers_are_the_input_and_every_activation():
    assert ManifoldMixup().eligible_layers(_model()) == [None, "2", "4"]
    assert ManifoldMixup(mix_input=False).eligible_layers(_model()) == ["2", "4"]
    assert ManifoldMixup(layers=["4", "1"]).eligible_layers(_model()) == [None, "4", "1"]


def test_lambda_one_is_the_plain_cross_entropy():
    model, (x, y) = _model(), _batch()
    plain = F.cross_entropy(model(x), y)
    mixup = ManifoldMixup()
    permutation = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    for layer in mixup.eligible_layers(model):
        loss = mixup.loss(model, x, y, MixupDraw(lam=1.0, permutation=permutation, layer=layer))
        torch.testing.assert_close(loss, plain, atol=1e-15, rtol=0)


def test_mixing_at_the_input_matches_the_hand_computation():
    model, (x, y) = _model(), _batch()
    mixup = ManifoldMixup(layers=())
    draw = mixup.draw(model, 7, torch.Generator().manual_seed(5))
    loss = mixup(model, x, y, torch.Generator().manual_seed(5))
    assert draw.layer is None
    assert 0.0 < draw.lam < 1.0
    assert sorted(draw.permutation.tolist()) == list(range(7))
    lam, permutation = draw.lam, draw.permutation
    expected = _hand_loss(model(lam * x + (1 - lam) * x[permutation]), y, lam, permutation)
    torch.testing.assert_close(loss, expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("layer", ["2", "4"])
def test_mixing_at_a_hidden_layer_matches_a_split_forward_pass(layer):
    model, (x, y) = _model(), _batch()
    mixup = ManifoldMixup(layers=[layer], mix_input=False)
    draw = mixup.draw(model, 7, torch.Generator().manual_seed(11))
    loss = mixup(model, x, y, torch.Generator().manual_seed(11))
    assert draw.layer == layer
    split = int(layer) + 1
    hidden = model[:split](x)
    lam, permutation = draw.lam, draw.permutation
    logits = model[split:](lam * hidden + (1 - lam) * hidden[permutation])
    torch.testing.assert_close(loss, _hand_loss(logits, y, lam, permutation), atol=1e-15, rtol=0)


def test_gradients_flow_through_the_mixed_hidden_state():
    model, (x, y) = _model(), _batch()
    ManifoldMixup(mix_input=False)(model, x, y, torch.Generator().manual_seed(0)).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_the_hook_is_removed_and_the_model_unchanged():
    model, (x, y) = _model(), _batch()
    before = model(x)
    mixup = ManifoldMixup(mix_input=False)
    for seed in range(4):
        mixup(model, x, y, torch.Generator().manual_seed(seed))
    assert _hooks(model) == 0
    assert torch.equal(model(x), before)


def test_the_hook_is_removed_when_the_forward_pass_fails():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            self.act(x)
            raise RuntimeError("boom")

    model = Broken()
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="boom"):
        ManifoldMixup(mix_input=False)(model, x, y, torch.Generator().manual_seed(0))
    assert _hooks(model) == 0


def test_works_on_a_non_sequential_model_and_mixes_a_reused_module_once():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 4)
            self.act = nn.Tanh()  # called twice
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            h = self.act(x)
            return self.head(self.act(self.inner(h)) + h)

    torch.manual_seed(0)
    model = Residual().double()
    x = torch.rand(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    mixup = ManifoldMixup(mix_input=False)
    draw = mixup.draw(model, 5, torch.Generator().manual_seed(2))
    loss = mixup.loss(model, x, y, draw)
    lam, permutation = draw.lam, draw.permutation
    h = torch.tanh(x)
    h = lam * h + (1 - lam) * h[permutation]
    logits = model.head(torch.tanh(model.inner(h)) + h)
    torch.testing.assert_close(loss, _hand_loss(logits, y, lam, permutation), atol=1e-15, rtol=0)


def test_reproducible_from_the_generator_seed():
    model, (x, y) = _model(), _batch()
    mixup = ManifoldMixup()
    losses = [mixup(model, x, y, torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(losses[0], losses[1])
    assert not torch.equal(losses[0], losses[2])
    first = mixup.draw(model, 7, torch.Generator().manual_seed(3))
    second = mixup.draw(model, 7, torch.Generator().manual_seed(3))
    assert first.lam == second.lam and first.layer == second.layer
    assert torch.equal(first.permutation, second.permutation)


def test_draws_cover_every_layer_and_follow_the_beta_distribution():
    model = _model()
    mixup = ManifoldMixup(alpha=2.0)
    generator = torch.Generator().manual_seed(0)
    draws = [mixup.draw(model, 4, generator) for _ in range(600)]
    layers = [draw.layer for draw in draws]
    for layer in (None, "2", "4"):
        assert 150 < layers.count(layer) < 250
    lams = [draw.lam for draw in draws]
    assert stats.kstest(lams, stats.beta(2.0, 2.0).cdf).pvalue > 1e-3


def test_beta_quantile_matches_scipy():
    for alpha in (0.2, 1.0, 2.0, 7.5):
        for u in (0.0, 0.01, 0.3, 0.5, 0.97, 1.0):
            expected = stats.beta(alpha, alpha).ppf(u)
            assert beta_quantile(u, alpha) == pytest.approx(expected, abs=1e-12)


def test_training_on_the_digits_with_manifold_mixup_learns(digits_test):
    train = load_digits("train")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    mixup = ManifoldMixup()
    train_classifier(model, train.x, train.y, epochs=10, lr=3e-3, objective=mixup, seed=1)
    with torch.no_grad():
        accuracy = (model(digits_test.x).argmax(1) == digits_test.y).float().mean()
    assert accuracy > 0.9  # chance is 0.1
    assert _hooks(model) == 0


def test_bad_arguments_are_named():
    model, (x, y) = _model(), _batch()
    generator = torch.Generator().manual_seed(0)
    for alpha in (0.0, -1.0):
        with pytest.raises(InvalidArgumentError, match="alpha must be > 0"):
            ManifoldMixup(alpha=alpha)
    with pytest.raises(InvalidTypeError, match="alpha must be a real number"):
        ManifoldMixup(alpha="2")
    with pytest.raises(InvalidTypeError, match="layers must be a sequence of module names"):
        ManifoldMixup(layers="relu")
    with pytest.raises(InvalidTypeError, match=r"layers\[1\] must be a module name"):
        ManifoldMixup(layers=["2", 4])
    with pytest.raises(InvalidArgumentError, match="layers names 'relu9', which is not a module"):
        ManifoldMixup(layers=["relu9"])(model, x, y, generator)
    with pytest.raises(InvalidArgumentError, match="no layer to mix at"):
        ManifoldMixup(mix_input=False)(nn.Linear(6, 3), x.flatten(1), y, generator)
    with pytest.raises(InvalidTypeError, match="y must have an integer dtype"):
        ManifoldMixup()(model, x, y.double(), generator)
    with pytest.raises(InvalidTypeError, match="y must have an integer dtype"):
        ManifoldMixup()(model, x, F.one_hot(y, 3).double(), generator)
    with pytest.raises(InvalidTypeError, match=r"generator must be a torch\.Generator"):
        ManifoldMixup()(model, x, y, 0)
    with pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"):
        ManifoldMixup()(lambda t: t, x, y, generator)
    with pytest.raises(ModelError, match="mixes tensors with the batch first"):
        lstm = nn.LSTM(3, 3, batch_first=True).double()
        ManifoldMixup(layers=[""], mix_input=False)(lstm, x[:, 0], y, generator)
