"""Greedy pretraining and fine-tuning with labels or with probability targets."""

from __future__ import annotations

import pytest
import torch

from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.training import fine_tune, greedy_pretrain, target_cross_entropy


def _data(n: int = 90, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=gen)
    means = torch.tensor(
        [[0.9, 0.8, 0.1, 0.2, 0.5], [0.1, 0.2, 0.9, 0.7, 0.5], [0.5, 0.1, 0.5, 0.1, 0.9]]
    )
    return (torch.rand(n, 5, generator=gen) < means[y]).float(), y


@pytest.mark.parametrize("method", ["mean_field", "straight_through"])
def test_one_hot_targets_train_exactly_like_labels(method: str) -> None:
    x, y = _data()
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    nets = []
    for targets in (y, one_hot):
        net = DeepRBM([5, 4], 3, seed=1)
        greedy_pretrain(net, x, targets, epochs=2, seed=2)
        fine_tune(net, x, targets, method=method, epochs=2, seed=3)  # type: ignore[arg-type]
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_soft_targets_pull_the_mean_field_output_towards_them() -> None:
    """Fine-tuning on one fixed soft target makes the outputs approach it (the loss is its KL)."""
    x, _ = _data()
    target = torch.tensor([0.6, 0.3, 0.1])
    net = DeepRBM([5, 4], 3, seed=0)
    fine_tune(net, x, target.expand(x.shape[0], -1), method="mean_field", epochs=60, lr=0.05)
    with torch.no_grad():
        outputs = net(x).exp()
    torch.testing.assert_close(outputs.mean(0), target, atol=0.02, rtol=0)


def test_target_cross_entropy_matches_the_definition() -> None:
    log_probs = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    expected = -log_probs[torch.arange(6), labels].mean()
    torch.testing.assert_close(target_cross_entropy(log_probs, labels), expected)
    soft = torch.full((6, 4), 0.25)
    torch.testing.assert_close(target_cross_entropy(log_probs, soft), -log_probs.mean(1).mean())


def test_bad_targets_are_refused_with_their_shape() -> None:
    x, _y = _data()
    net = DeepRBM([5, 4], 3, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"y must have shape \(90, 3\)"):
        fine_tune(net, x, torch.full((90, 2), 0.5))
    with pytest.raises(InvalidArgumentError, match="y must hold probability vectors"):
        fine_tune(net, x, torch.full((90, 3), 0.5))
    with pytest.raises(InvalidArgumentError, match="y must be finite"):
        fine_tune(net, x, torch.full((90, 3), float("nan")))
