from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.cloning.oracle import BlackBox, QueryBudgetExceededError
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError


def _linear(seed: int = 0, features: int = 5, classes: int = 4) -> nn.Linear:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(features, classes).double()


def _inputs(n: int, features: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, features, generator=torch.Generator().manual_seed(seed)).double()


class Recorder:
    """A victim that publishes softmax probabilities and records every batch it sees."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.batches: list[int] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        return torch.softmax(self.model(x), dim=1)


def test_counts_queries_and_returns_the_published_probabilities():
    model = _linear()
    victim = Recorder(model)
    box = BlackBox(victim, max_queries=10)
    x = _inputs(7)
    first, second = box(x[:4]), box(x[4:])
    assert box.queries_used == 7 and box.queries_left == 3
    assert box.num_classes == 4 and box.labels_only is False
    assert first.dtype == torch.float64 and first.shape == (4, 4)
    expected = torch.softmax(model(x), dim=1).detach()
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0)
    assert victim.grad_enabled == [False, False]


def test_splits_large_calls_into_batches_with_the_same_answers():
    victim = Recorder(_linear())
    x = _inputs(10)
    chunked = BlackBox(victim, batch_size=3)(x)
    assert victim.batches == [3, 3, 3, 1]
    torch.testing.assert_close(chunked, BlackBox(victim)(x), rtol=0, atol=0)


def test_float32_answers_come_back_as_float64():
    model = _linear().float()
    out = BlackBox(lambda x: torch.softmax(model(x), dim=1))(_inputs(3).float())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.sum(1), torch.ones(3, dtype=torch.float64))


def test_a_call_over_budget_is_refused_whole_and_spends_nothing():
    victim = Recorder(_linear())
    box = BlackBox(victim, max_queries=10)
    box(_inputs(7))
    with pytest.raises(QueryBudgetExceededError, match=r"max_queries=10, 7 used, 4 requested"):
        box(_inputs(4))
    assert box.queries_used == 7
    assert victim.batches == [7]
    assert isinstance(QueryBudgetExceededError("x"), InvalidArgumentError)
    box(_inputs(3))
    assert box.queries_left == 0


def test_labels_become_one_hot_vectors():
    model = _linear()
    box = BlackBox(lambda x: model(x).argmax(dim=1), num_classes=4)
    x = _inputs(6)
    out = box(x)
    assert box.labels_only is True
    expected = torch.eye(4, dtype=torch.float64)[model(x).argmax(dim=1)]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_max_queries_zero_is_refused():
    with pytest.raises(InvalidArgumentError, match="max_queries must be >= 1, got 0"):
        BlackBox(lambda x: x, max_queries=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_queries": -3}, InvalidArgumentError, "max_queries must be an integer >= 0"),
        ({"max_queries": 2.5}, InvalidTypeError, "max_queries must be an integer"),
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be an integer >= 1"),
        ({"num_classes": 1}, InvalidArgumentError, "num_classes must be an integer >= 2"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        BlackBox(lambda x: x, **kwargs)


def test_a_victim_that_is_not_callable_is_refused():
    with pytest.raises(InvalidTypeError, match="victim must be a callable"):
        BlackBox(3)  # type: ignore[arg-type]


def _logits(x):
    return _linear()(x)


def _probs(x):
    return torch.softmax(_linear()(x), dim=1)


@pytest.mark.parametrize(
    ("victim", "message"),
    [
        (
            lambda x: _probs(x)[:, :, None],
            r"probability vectors of shape \(3, C\).*shape \(3, 4, 1\)",
        ),
        (lambda x: _probs(x)[:, 0], r"integer labels of shape \(3,\).*dtype torch.float64"),
        (lambda x: _probs(x)[:2], r"for a batch of 3 inputs; returned .*shape \(2, 4\)"),
        (lambda x: torch.ones(x.shape[0], 1, dtype=torch.float64), r"C >= 2"),
        (lambda x: _probs(x) > 0.5, r"dtype torch.bool"),
        (lambda x: _probs(x).numpy(), r"must return a tensor"),
        (
            lambda x: torch.full((x.shape[0], 4), float("nan")),
            "returned 12 NaN or infinite entries",
        ),
        (
            _logits,
            r"victim must return probability vectors .*got rows summing to .*"
            r"wrap it with softmax or use vulnscope.cloning.defence.Undefended\(model\)",
        ),
        (lambda x: 2 * _probs(x), r"rows summing to 2\.\.2"),
        (
            lambda x: torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(x.shape[0], 2),
            r"smallest entry -0.5",
        ),
        (
            lambda x: torch.tensor([[1 + 1e-9, -1e-9]], dtype=torch.float64).expand(x.shape[0], 2),
            r"entries >= 0.*smallest entry -1e-09",
        ),
    ],
)
def test_every_bad_answer_is_a_model_error_naming_the_victim(victim, message):
    box = BlackBox(victim)
    with pytest.raises(ModelError, match=message) as info:
        box(_inputs(3))
    assert "victim" in str(info.value)
    assert box.queries_used == 0 and box.num_classes is None


def test_the_number_of_classes_may_not_change():
    calls = iter([4, 3])
    box = BlackBox(lambda x: torch.softmax(torch.zeros(x.shape[0], next(calls)), dim=1))
    box(_inputs(2))
    with pytest.raises(ModelError, match=r"victim must return 4 probabilities .* shape \(2, 3\)"):
        box(_inputs(2))
    assert box.queries_used == 2


def test_a_stated_number_of_classes_is_enforced():
    with pytest.raises(ModelError, match="victim must return 3 probabilities"):
        BlackBox(_probs, num_classes=3)(_inputs(2))


def test_a_batch_split_whose_second_chunk_fails_counts_nothing():
    box = BlackBox(lambda x: _probs(x) if x.shape[0] == 2 else _logits(x), batch_size=2)
    with pytest.raises(ModelError, match="probability vectors"):
        box(_inputs(3))
    assert box.queries_used == 0 and box.num_classes is None


def test_labels_need_the_number_of_classes_and_must_be_in_range():
    with pytest.raises(ModelError, match=r"construct BlackBox\(victim, num_classes=C\)"):
        BlackBox(lambda x: torch.zeros(x.shape[0], dtype=torch.int64))(_inputs(2))
    with pytest.raises(ModelError, match=r"labels in 0..2, returned labels in 0..3"):
        BlackBox(lambda x: torch.arange(x.shape[0]), num_classes=3)(_inputs(4))


def test_a_victim_may_not_switch_between_labels_and_probabilities():
    answers = iter([torch.zeros(2, dtype=torch.int64), torch.full((2, 2), 0.5)])
    box = BlackBox(lambda x: next(answers), num_classes=2)
    box(_inputs(2))
    with pytest.raises(ModelError, match="returned labels before, probability vectors now"):
        box(_inputs(2))


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        ([[0.5]], InvalidTypeError, "x must be a torch.Tensor"),
        (torch.zeros(3), InvalidArgumentError, r"shape \(B, \.\.\.\)"),
        (torch.zeros(0, 5), InvalidArgumentError, "B >= 1"),
        (torch.zeros(2, 5, dtype=torch.int64), InvalidArgumentError, "floating"),
        (torch.full((2, 5), float("inf")), InvalidArgumentError, "x must be finite"),
    ],
)
def test_bad_queries_are_refused_before_the_victim_sees_them(x, error, message):
    victim = Recorder(_linear())
    box = BlackBox(victim)
    with pytest.raises(error, match=message):
        box(x)
    assert victim.batches == [] and box.queries_used == 0
