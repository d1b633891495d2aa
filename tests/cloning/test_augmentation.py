from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import vulnscope.cloning.extraction as extract_module
from helpers import random_inputs, tiny_classifier
from vulnscope.cloning.augmentation import jacobian_augmentation, periodic_step
from vulnscope.cloning.extraction import extract
from vulnscope.cloning.oracle import BlackBox
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

SHAPE = (1, 2, 3)


def _label_rows(clone: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d F[label](x) / dx for each input, from autograd's full Jacobian of one input at a time."""
    rows = []
    for point, label in zip(x, labels, strict=True):
        jacobian = torch.autograd.functional.jacobian(lambda p: clone(p[None])[0], point)
        rows.append(jacobian[label])
    return torch.stack(rows)


@pytest.mark.parametrize("step", [0.1, -0.05])
def test_each_point_moves_by_step_along_the_sign_of_the_label_gradient(step):
    clone = tiny_classifier(0, SHAPE, 4)
    x = random_inputs(1, 12, SHAPE, (0.2, 0.8))  # a 0.1 step stays inside [0, 1]
    labels = torch.arange(12) % 4
    new = jacobian_augmentation(clone, x, labels, step=step)
    rows = _label_rows(clone, x, labels)
    assert bool((rows != 0).all())
    torch.testing.assert_close(new - x, step * rows.sign(), rtol=0, atol=1e-12)
    linf = (new - x).flatten(1).abs().amax(dim=1)
    torch.testing.assert_close(linf, torch.full((12,), abs(step), dtype=x.dtype))
    # a small positive step raises the label's logit, a negative one lowers it
    with torch.no_grad():
        gain = (clone(new) - clone(x)).gather(1, labels[:, None])[:, 0]
    assert bool((gain * step > 0).all())


def test_points_are_clipped_to_the_bounds_and_flat_coordinates_stay():
    clone = nn.Linear(3, 2).double()
    with torch.no_grad():
        clone.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    x = torch.tensor([[0.95, 0.05, 0.5], [0.5, 0.5, 0.5]], dtype=torch.float64)
    new = jacobian_augmentation(clone, x, torch.tensor([0, 0]), step=0.1)
    expected = torch.tensor([[1.0, 0.0, 0.5], [0.6, 0.4, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-12)


def test_the_clone_is_left_as_it_was_found():
    clone = tiny_classifier(0, SHAPE, 4).train()
    clone[1].weight.requires_grad_(False)
    x = random_inputs(1, 5, SHAPE, (0.0, 1.0))
    jacobian_augmentation(clone, x, torch.zeros(5, dtype=torch.int64))
    assert clone.training and all(module.training for module in clone.modules())
    assert clone[1].weight.requires_grad is False and clone[3].weight.requires_grad is True
    assert all(parameter.grad is None for parameter in clone.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"step": 0.0}, InvalidArgumentError, "step must be non-zero, got 0.0"),
        ({"step": float("nan")}, InvalidArgumentError, "step must be finite"),
        ({"labels": torch.full((4,), 4)}, InvalidArgumentError, r"labels must hold .*< 4"),
        ({"labels": torch.zeros(3, dtype=torch.int64)}, InvalidArgumentError, r"shape \(4,\)"),
        ({"x": torch.full((4, *SHAPE), 2.0, dtype=torch.float64)}, InvalidArgumentError, "bounds"),
        ({"clone": lambda x: x}, InvalidTypeError, "clone must be a torch.nn.Module"),
        ({"clone": nn.Flatten(0)}, ModelError, r"clone must return logits of shape \(N, C\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    arguments = {
        "clone": tiny_classifier(0, SHAPE, 4),
        "x": random_inputs(1, 4, SHAPE, (0.0, 1.0)),
        "labels": torch.zeros(4, dtype=torch.int64),
    }
    arguments.update(kwargs)
    step = arguments.pop("step", 0.1)
    with pytest.raises(error, match=message):
        jacobian_augmentation(**arguments, step=step)


def test_periodic_step_flips_sign_every_tau_rounds():
    assert [periodic_step(0.1, rho, 3) for rho in range(7)] == [0.1] * 3 + [-0.1] * 3 + [0.1]
    with pytest.raises(InvalidArgumentError, match="tau must be an integer >= 1"):
        periodic_step(0.1, 0, 0)


def _victim(seed: int = 0):
    teacher = tiny_classifier(seed, SHAPE, 4)
    return lambda x: torch.softmax(teacher(x), dim=1)


def _untrained(model, x, targets, seed):
    return model


def _architecture():
    return tiny_classifier(7, SHAPE, 4)


@given(
    seed_size=st.integers(1, 12),
    budget=st.integers(1, 80),
    rounds=st.integers(1, 5),
)
def test_extract_with_augmentation_never_exceeds_and_exhausts_the_budget(seed_size, budget, rounds):
    seeds = random_inputs(2, seed_size, SHAPE, (0.0, 1.0))
    box = BlackBox(_victim())
    result = extract(
        box,
        seeds,
        _architecture,
        query_budget=budget,
        augmentation="jacobian",
        rounds=rounds,
        trainer=_untrained,
    )
    # the set doubles each round until the budget runs out
    sizes = [min(budget, seed_size * 2**rho) for rho in range(rounds)]
    expected = tuple(dict.fromkeys(sizes))
    assert result.round_sizes == expected
    assert result.queries_used == box.queries_used == expected[-1] <= budget
    assert result.query_inputs.shape[0] == result.query_outputs.shape[0] == expected[-1]
    if seed_size * 2 ** (rounds - 1) >= budget:
        assert result.queries_used == budget
    assert result.query_inputs.min() >= 0 and result.query_inputs.max() <= 1


def test_augmented_queries_are_the_jacobian_steps_of_the_trained_clone():
    victim = _victim()
    seeds = random_inputs(2, 10, SHAPE, (0.0, 1.0))

    def trainer(model, x, targets, seed):
        return extract_module.train_classifier(model, x, targets, epochs=3, seed=seed)

    result = extract(
        victim,
        seeds,
        _architecture,
        query_budget=25,
        augmentation="jacobian",
        augmentation_step=0.2,
        rounds=3,
        trainer=trainer,
        seed=4,
    )
    assert result.round_sizes == (10, 20, 25) and result.queries_used == 25
    torch.testing.assert_close(result.query_inputs[:10], seeds, rtol=0, atol=0)
    # round 0: the clone as extract built it, trained on the seed set with seed 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        clone = _architecture()
    clone = trainer(clone, seeds, victim(seeds).detach(), 4)
    labels = victim(seeds).argmax(dim=1)
    step_one = jacobian_augmentation(clone, seeds, labels, step=0.2)
    torch.testing.assert_close(result.query_inputs[10:20], step_one, rtol=0, atol=1e-12)
    # the last round queries 5 of the 20 new points: each is a 0.2 step from a known point
    last = result.query_inputs[20:]
    distance = (last[:, None] - result.query_inputs[None, :20]).flatten(2).abs().amax(dim=2)
    assert bool((distance.min(dim=1).values <= 0.2 + 1e-12).all())
    torch.testing.assert_close(result.query_outputs, victim(result.query_inputs).detach())


def test_the_step_sign_alternates_every_tau_rounds(monkeypatch):
    steps = []

    def recording(clone, x, labels, *, step, bounds):
        steps.append(step)
        return jacobian_augmentation(clone, x, labels, step=step, bounds=bounds)

    monkeypatch.setattr(extract_module, "jacobian_augmentation", recording)
    extract(
        _victim(),
        random_inputs(2, 2, SHAPE, (0.0, 1.0)),
        _architecture,
        augmentation="jacobian",
        augmentation_step=0.05,
        augmentation_tau=2,
        rounds=6,
        trainer=_untrained,
    )
    assert steps == [0.05, 0.05, -0.05, -0.05, 0.05]


def test_a_seed_set_larger_than_the_budget_is_subsampled():
    seeds = random_inputs(2, 30, SHAPE, (0.0, 1.0))
    result = extract(
        _victim(),
        seeds,
        _architecture,
        query_budget=8,
        augmentation="jacobian",
        trainer=_untrained,
    )
    assert result.round_sizes == (8,) and result.queries_used == 8
    matches = (result.query_inputs[:, None] == seeds[None]).flatten(2).all(dim=2)
    assert bool((matches.sum(dim=1) == 1).all()) and matches.any(dim=0).sum() == 8
