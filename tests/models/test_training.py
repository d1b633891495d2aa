from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models import train_classifier


def _blobs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.2, 0.2], [0.8, 0.8], [0.2, 0.8]])
    y = torch.randint(0, 3, (300,), generator=generator)
    x = centres[y] + 0.05 * torch.randn(300, 2, generator=generator)
    return x, y


def _fresh(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_training_learns_separable_blobs_and_returns_eval_mode():
    x, y = _blobs()
    model = train_classifier(_fresh(0), x, y, epochs=30, lr=1e-2)
    assert not model.training
    assert (model(x).argmax(1) == y).float().mean() > 0.98


def test_same_seed_same_weights_different_seed_different_weights():
    x, y = _blobs()
    first = train_classifier(_fresh(0), x, y, epochs=2, seed=5)
    second = train_classifier(_fresh(0), x, y, epochs=2, seed=5)
    third = train_classifier(_fresh(0), x, y, epochs=2, seed=6)
    for a, b, _c in zip(first.parameters(), second.parameters(), third.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, c) for a, c in zip(first.parameters(), third.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be > 0.0"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_training_arguments_are_named(kwargs, message):
    x, y = _blobs()
    with pytest.raises(InvalidArgumentError, match=message):
        train_classifier(_fresh(0), x, y, **kwargs)


def _teacher_targets(seed=0):
    """Soft targets of a fixed linear teacher on uniform inputs: softmax(x A + c)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(300, 2, generator=generator)
    weight = 3 * torch.randn(2, 3, generator=generator)
    bias = torch.randn(3, generator=generator)
    return x, torch.softmax(x @ weight + bias, dim=1).double()


def test_probability_targets_are_fitted_by_the_soft_cross_entropy():
    x, targets = _teacher_targets()
    torch.manual_seed(0)
    student = train_classifier(nn.Linear(2, 3), x, targets, epochs=100, lr=5e-2, batch_size=32)
    with torch.no_grad():
        probs = torch.softmax(student(x), dim=1).double()
    # the minimiser of E[-t log softmax(z)] over linear models is the teacher itself
    assert (probs - targets).abs().max() < 1e-3
    # a hard-label fit of the same model does not reproduce the teacher's probabilities
    torch.manual_seed(0)
    hard = train_classifier(
        nn.Linear(2, 3), x, targets.argmax(1), epochs=100, lr=5e-2, batch_size=32
    )
    with torch.no_grad():
        assert (torch.softmax(hard(x), dim=1).double() - targets).abs().max() > 0.1


def test_one_hot_targets_train_like_labels():
    x, y = _blobs()
    by_labels = train_classifier(_fresh(0), x, y, epochs=3, seed=2)
    by_one_hot = train_classifier(_fresh(0), x, torch.eye(3)[y], epochs=3, seed=2)
    for a, b in zip(by_labels.parameters(), by_one_hot.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_soft_cross_entropy_gradient_matches_the_formula():
    # Adam's first step is lr * g / (|g| + eps) per coordinate (bias-corrected m = g and
    # v = g^2), so one full-batch epoch reveals the gradient of the loss it minimised
    x, targets = _teacher_targets()
    model = _fresh(3)
    reference = _fresh(3)
    train_classifier(model, x, targets, epochs=1, batch_size=300, lr=1e-3)
    logits = reference(x)
    loss = -(targets.float() * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for before, after, grad in zip(reference.parameters(), model.parameters(), grads, strict=True):
        step = (before - after).detach()
        torch.testing.assert_close(step, 1e-3 * grad / (grad.abs() + 1e-8), rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (torch.full((300, 3), 0.5), r"y must hold probability vectors .*sums in \[1.5, 1.5\]"),
        (torch.tensor([[1.5, -0.5, 0.0]]).expand(300, 3), r"non-negative .*minimum -0.5"),
        (torch.full((300, 4), 0.25), r"y must have shape \(300, 3\) .*got shape \(300, 4\)"),
        (torch.full((299, 3), 1 / 3), r"y must have shape \(300, 3\) .*got shape \(299, 3\)"),
        (torch.full((300, 3), float("nan")), "y must be finite"),
    ],
)
def test_bad_probability_targets_are_named(targets, message):
    x, _ = _blobs()
    with pytest.raises(InvalidArgumentError, match=message):
        train_classifier(_fresh(0), x, targets)


def test_checking_the_width_leaves_batch_norm_statistics_alone():
    x, targets = _teacher_targets()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(300, 4\)"):
        train_classifier(model, x, targets)
    assert model.training
    assert torch.equal(model[1].running_mean, torch.zeros(8))
    assert int(model[1].num_batches_tracked) == 0


# --- objective and after_step: the hooks the training-time defences plug into ---


def _toy_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 1, 2, 2, generator=generator)
    return x, (x.flatten(1).sum(1) > 2).long()


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_cross_entropy_objective_reproduces_the_default_training_exactly() -> None:
    x, y = _toy_data()
    default = train_classifier(_toy_model(), x, y, epochs=3, batch_size=8, seed=5)
    seen: list[int] = []

    def cross_entropy(model, xb, yb, generator):  # type: ignore[no-untyped-def]
        seen.append(xb.shape[0])
        return torch.nn.functional.cross_entropy(model(xb), yb)

    explicit = train_classifier(
        _toy_model(), x, y, epochs=3, batch_size=8, seed=5, objective=cross_entropy
    )
    for a, b in zip(default.parameters(), explicit.parameters(), strict=True):
        assert torch.equal(a, b)
    assert seen == [8] * 15


def test_objective_randomness_does_not_change_the_minibatch_order() -> None:
    x, y = _toy_data()
    orders: list[list[torch.Tensor]] = [[], []]

    def recorder(index: int, draws: int):  # type: ignore[no-untyped-def]
        def objective(model, xb, yb, generator):  # type: ignore[no-untyped-def]
            torch.rand(draws, generator=generator)
            orders[index].append(xb.clone())
            return torch.nn.functional.cross_entropy(model(xb), yb)

        return objective

    train_classifier(_toy_model(), x, y, epochs=2, batch_size=8, seed=1, objective=recorder(0, 0))
    train_classifier(_toy_model(), x, y, epochs=2, batch_size=8, seed=1, objective=recorder(1, 7))
    assert all(torch.equal(a, b) for a, b in zip(*orders, strict=True))


def test_objective_generator_is_seeded_and_the_model_is_in_training_mode() -> None:
    x, y = _toy_data()
    draws: list[list[float]] = [[], []]
    modes: list[bool] = []

    def recorder(index: int):  # type: ignore[no-untyped-def]
        def objective(model, xb, yb, generator):  # type: ignore[no-untyped-def]
            draws[index].append(float(torch.rand(1, generator=generator)))
            modes.append(model.training)
            return torch.nn.functional.cross_entropy(model(xb), yb)

        return objective

    for index in (0, 1):
        train_classifier(
            _toy_model(), x, y, epochs=1, batch_size=8, seed=9, objective=recorder(index)
        )
    assert draws[0] == draws[1] and len(set(draws[0])) == 5
    assert all(modes)


def test_after_step_runs_after_every_optimiser_step_without_gradients() -> None:
    x, y = _toy_data()
    calls: list[bool] = []

    def clip(model: torch.nn.Module) -> None:
        calls.append(torch.is_grad_enabled())
        for parameter in model.parameters():
            parameter.clamp_(-0.01, 0.01)

    model = train_classifier(_toy_model(), x, y, epochs=2, batch_size=10, seed=0, after_step=clip)
    assert calls == [False] * 8
    assert all(float(p.detach().abs().max()) <= 0.01 for p in model.parameters())


@pytest.mark.parametrize("name", ["objective", "after_step"])
def test_non_callable_hooks_are_refused_by_name(name: str) -> None:
    x, y = _toy_data()
    with pytest.raises(InvalidTypeError, match=name):
        train_classifier(_toy_model(), x, y, epochs=1, **{name: 3})
