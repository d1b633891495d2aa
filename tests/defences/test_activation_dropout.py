from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.data import load_digits
from vulnscope.defences.dropout import ACTIVATION_TYPES, activation_dropout
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, VulnscopeWarning
from vulnscope.models import train_classifier


def _hooks(model):
    return sum(len(module._forward_hooks) for module in model.modules())


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3)
    )


def _inputs(n=64, seed=0):
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))


def _reference_dropout(h, p, generator):
    keep = torch.rand(h.shape, generator=generator, dtype=h.dtype) >= p
    return torch.where(keep, h / (1 - p), torch.zeros_like(h)), keep


def test_mask_is_reproduced_from_the_generator_in_forward_order():
    # sigmoid outputs are positive: a zero is a dropped unit and nothing else
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sigmoid(), nn.Linear(40, 30), nn.Sigmoid()).train()
    x = torch.randn(100, 40, generator=torch.Generator().manual_seed(1))
    p = 0.3
    with activation_dropout(model, p, torch.Generator().manual_seed(7)):
        output = model(x)
    reference = torch.Generator().manual_seed(7)
    first, keep_first = _reference_dropout(torch.sigmoid(x), p, reference)
    second, keep_second = _reference_dropout(torch.sigmoid(model[1](first)), p, reference)
    torch.testing.assert_close(output, second, atol=0, rtol=0)
    assert torch.equal(output != 0, keep_second)
    for keep in (keep_first, keep_second):
        assert abs(1 - keep.double().mean().item() - p) < 0.02


def test_kept_units_are_scaled_by_one_over_one_minus_p():
    model = nn.Sequential(nn.ReLU()).train()
    x = torch.rand(50, 200, generator=torch.Generator().manual_seed(0)) + 0.5
    with activation_dropout(model, 0.25, torch.Generator().manual_seed(0)):
        output = model(x)
    kept = output != 0
    torch.testing.assert_close(output[kept], x[kept] / 0.75)
    assert abs((~kept).double().mean().item() - 0.25) < 0.01


def test_the_expected_output_is_preserved():
    model = nn.Sequential(nn.Tanh()).train()
    h = torch.linspace(-2, 2, 41)
    x = h.expand(20000, -1)
    with activation_dropout(model, 0.4, torch.Generator().manual_seed(3)):
        mean = model(x).mean(0)
    # each mean has standard deviation |tanh h| sqrt(p / (1 - p) / n) < 0.006
    torch.testing.assert_close(mean, torch.tanh(h), atol=0.03, rtol=0)


def test_eval_mode_is_untouched_and_draws_nothing():
    model, x = _mlp().eval(), _inputs()
    expected = model(x)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    with activation_dropout(model, 0.5, generator):
        assert torch.equal(model(x), expected)
    assert torch.equal(generator.get_state(), state)


def test_zero_p_is_the_identity_in_training_mode():
    model, x = _mlp().train(), _inputs()
    expected = model(x)
    generator = torch.Generator().manual_seed(0)
    with activation_dropout(model, 0.0, generator):
        assert torch.equal(model(x), expected)


def test_after_exit_the_model_is_the_original_function_and_scripts_cleanly():
    model, x = _mlp().train(), _inputs()
    expected = model(x)
    with activation_dropout(model, 0.5, torch.Generator().manual_seed(0)) as inside:
        assert inside is model
        assert _hooks(model) == 2
        assert not torch.equal(model(x), expected)
    assert _hooks(model) == 0
    assert torch.equal(model(x), expected)
    scripted = torch.jit.script(model.eval())
    assert torch.equal(scripted(x), model(x))


def test_hooks_are_removed_when_the_block_raises():
    model = _mlp()
    with (
        pytest.raises(RuntimeError, match="boom"),
        activation_dropout(model, 0.5, torch.Generator().manual_seed(0)),
    ):
        model(_inputs())
        raise RuntimeError("boom")
    assert _hooks(model) == 0


def test_only_activation_modules_get_dropout():
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Softmax(dim=1)).train()
    x = torch.rand(3, 4)
    expected = model(x)
    with (
        pytest.warns(VulnscopeWarning, match="found no activation module"),
        activation_dropout(model, 0.5, torch.Generator().manual_seed(0)),
    ):
        assert torch.equal(model(x), expected)
    assert nn.ReLU in ACTIVATION_TYPES and nn.Softmax not in ACTIVATION_TYPES


def test_training_inside_the_block_regularises_and_learns(digits_test):
    train = load_digits("train")

    def fit(dropout):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        if dropout:
            with activation_dropout(model, 0.2, torch.Generator().manual_seed(0)):
                return train_classifier(model, train.x, train.y, epochs=8, lr=3e-3)
        return train_classifier(model, train.x, train.y, epochs=8, lr=3e-3)

    plain, dropped = fit(False), fit(True)
    assert _hooks(dropped) == 0
    assert not torch.equal(plain[1].weight, dropped[1].weight)
    with torch.no_grad():
        accuracy = (dropped(digits_test.x).argmax(1) == digits_test.y).float().mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_p_outside_zero_one_is_refused(p):
    with (
        pytest.raises(InvalidArgumentError, match="p must be"),
        activation_dropout(_mlp(), p, torch.Generator()),
    ):
        pass


def test_bad_types_are_named():
    with (
        pytest.raises(InvalidTypeError, match="p must be a real number"),
        activation_dropout(_mlp(), "0.5", torch.Generator()),
    ):
        pass
    with (
        pytest.raises(InvalidTypeError, match=r"model must be a torch\.nn\.Module"),
        activation_dropout(lambda x: x, 0.5, torch.Generator()),
    ):
        pass
    with (
        pytest.raises(InvalidTypeError, match=r"generator must be a torch\.Generator"),
        activation_dropout(_mlp(), 0.5, 0),
    ):
        pass
