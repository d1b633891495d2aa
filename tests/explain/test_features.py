"""Ilyas et al.'s data sets: D_det, D_rand, the relabelled control and D_R, on tiny models."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from vulnscope.explain.features import (
    non_robust_dataset,
    relabel_targets,
    relabelled_clean,
    robust_dataset,
)

CLASSES = 3


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained to separate three blobs of 4x4 images in [0, 1] (float64)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(CLASSES, 1, 4, 4, generator=generator, dtype=torch.float64)
    labels = torch.arange(CLASSES).repeat(10)
    noise = 0.1 * torch.randn(30, 1, 4, 4, generator=generator, dtype=torch.float64)
    x = (centres[labels] + noise).clamp(0, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, CLASSES)
        ).double()
    for _ in range(200):  # plain gradient descent: an optimiser's first step costs seconds
        grads = torch.autograd.grad(
            nn.functional.cross_entropy(model(x), labels), list(model.parameters())
        )
        with torch.no_grad():
            for parameter, grad in zip(model.parameters(), grads, strict=True):
                parameter -= 0.5 * grad
    with torch.no_grad():
        assert bool((model(x).argmax(1) == labels).all())  # the fixture itself is sound
    return model.eval(), x, labels


@pytest.mark.parametrize("mode", ["det", "rand"])
def test_relabelled_to_the_targets_within_eps_and_mostly_reached(problem, mode):
    model, x, y = problem
    data = non_robust_dataset(model, x, y, mode=mode, eps=2.0, steps=50, seed=3)
    expected = relabel_targets(y, mode=mode, num_classes=CLASSES, seed=3)
    assert torch.equal(data.y, expected)
    if mode == "det":
        assert torch.equal(data.y, (y + 1) % CLASSES)
    assert torch.equal(data.original_labels, y)
    norms = (data.x - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= 2.0 + 1e-9
    assert torch.allclose(data.perturbation_norms, norms)
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1
    with torch.no_grad():
        reached = model(data.x).argmax(1) == data.y  # scored again, outside the attack
    assert torch.equal(reached, data.reached_target)
    assert float(reached.double().mean()) >= 0.9
    assert data.success_rate == pytest.approx(float(reached.double().mean()))


def test_random_targets_are_other_classes_uniformly_and_seeded():
    labels = torch.arange(10).repeat(900)
    targets = relabel_targets(labels, mode="rand", num_classes=10, seed=7)
    assert not bool((targets == labels).any())
    shifts = ((targets - labels) % 10).bincount(minlength=10)
    assert int(shifts[0]) == 0
    assert chisquare(shifts[1:].numpy()).pvalue > 1e-3  # uniform over the 9 other classes
    assert torch.equal(targets, relabel_targets(labels, mode="rand", num_classes=10, seed=7))
    assert not torch.equal(targets, relabel_targets(labels, mode="rand", num_classes=10, seed=8))


def test_same_seed_same_random_data_set(problem):
    model, x, y = problem
    first = non_robust_dataset(model, x, y, mode="rand", eps=1.0, steps=5, seed=11)
    second = non_robust_dataset(model, x, y, mode="rand", eps=1.0, steps=5, seed=11)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


@pytest.mark.parametrize("mode", ["det", "rand"])
def test_the_control_relabels_the_clean_images(problem, mode):
    model, x, y = problem
    control = relabelled_clean(x, y, mode=mode, num_classes=CLASSES, seed=5)
    assert torch.equal(control.x, x)
    assert float(control.perturbation_norms.abs().max()) == 0.0
    assert control.reached_target is None and control.success_rate is None
    assert control.eps == 0.0
    attacked = non_robust_dataset(model, x, y, mode=mode, eps=0.5, steps=3, seed=5)
    assert torch.equal(control.y, attacked.y)  # the same labels as the attacked data set


def test_robust_dataset_moves_towards_the_target_representation(problem):
    model, x, y = problem
    data = robust_dataset(model, x, y, steps=30, step_size=0.05, seed=2)
    penultimate = model[:-1]  # an independent read of the representation
    with torch.no_grad():
        target, start = penultimate(x), penultimate(x[data.start_index])
        final = penultimate(data.x)
    assert not bool((data.start_index == torch.arange(len(x))).any())
    assert torch.allclose(data.start_distance, (start - target).norm(dim=1))
    assert torch.allclose(data.final_distance, (final - target).norm(dim=1))
    assert bool((data.final_distance < data.start_distance).all())
    assert float((data.final_distance / data.start_distance).median()) < 0.5
    assert torch.equal(data.y, y)
    named = robust_dataset(model, x, y, layer="2", steps=30, step_size=0.05, seed=2)
    assert torch.equal(named.x, data.x)  # the ReLU's output is the last layer's input


def test_bad_inputs_raise_one_clear_error_each(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match=r"eps must be > 0.0, got 0.0"):
        non_robust_dataset(model, x, y, eps=0.0)
    with pytest.raises(ValueError, match=r"mode must be one of \['det', 'rand'\], got 'random'"):
        non_robust_dataset(model, x, y, mode="random", eps=1.0)
    with pytest.raises(ValueError, match=r"labels must have shape \(30,\).*got shape \(29,\)"):
        non_robust_dataset(model, x, y[:-1], eps=1.0)
    with pytest.raises(ValueError, match=r"labels must hold class indices < 3.*maximum 3"):
        relabelled_clean(x, y + 1, num_classes=CLASSES)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2, got 1"):
        relabel_targets(y, mode="det", num_classes=1, seed=0)
    with pytest.raises(ValueError, match=r"inputs must lie inside bounds \[0.0, 1.0\]"):
        non_robust_dataset(model, x + 2, y, eps=1.0)
    with pytest.raises(ValueError, match=r"layer must be one of the model's modules \['0', '1'"):
        robust_dataset(model, x, y, layer="fc9", steps=1)
    with pytest.raises(ValueError, match=r"inputs must hold at least 2 images"):
        robust_dataset(model, x[:1], y[:1], steps=1)
    with pytest.raises(TypeError, match=r"TorchScript module"):
        robust_dataset(torch.jit.script(model), x, y, steps=1)
