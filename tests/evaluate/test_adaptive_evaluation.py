"""The adaptive cascade: never weaker than the standard one, masking found, certificates sound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import random_inputs, reference_norm, tiny_classifier
from vulnscope.attacks import APGD, FGSM, Square
from vulnscope.data import load_digits
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate import (
    CascadeChunk,
    adaptive_chunk,
    adaptive_evaluation,
    adaptive_evaluation_curve,
    standard_evaluation_curve,
)
from vulnscope.evaluate.adaptive_chunk import dlr_ratio

CASCADE = ["apgd-ce", "apgd-t", "fab-t", Square(queries=300, p_init=0.8, seed=0)]
SHAPE = (1, 3, 3)


class _Quantised(nn.Module):
    """Inputs rounded to 9 grey levels: zero input gradients almost everywhere (masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 8) / 8)


class _Saturated(nn.Module):
    """Logits scaled as a distilled network's at temperature 1: the softmax saturates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * self.inner(x)


@pytest.fixture(scope="module")
def digits_mlp() -> nn.Module:
    """A small ReLU MLP trained briefly on the digits (about 95% test accuracy)."""
    train = load_digits("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            batch = torch.randint(0, len(train), (128,))
            loss = nn.functional.cross_entropy(model(train.x[batch]), train.y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.mark.parametrize(
    "variant, norm, epsilons",
    [
        ("plain", "linf", [0.05, 0.1]),
        ("plain", "l2", [0.5, 1.0]),
        ("quantised", "linf", [0.1]),  # gradients masked by rounding
        ("saturated", "l2", [0.5]),  # gradients masked by a saturated softmax
    ],
)
def test_never_weaker_than_the_standard_cascade(digits_mlp, variant, norm, epsilons):
    model = {
        "plain": digits_mlp,
        "quantised": _Quantised(digits_mlp),
        "saturated": _Saturated(digits_mlp),
    }[variant].eval()
    test = load_digits("test")
    x, y = test.x[:20], test.y[:20]
    cascade = ["apgd-ce", "apgd-t", "fab-t", Square(norm=norm, queries=300, p_init=0.8, seed=0)]
    adaptive = adaptive_evaluation_curve(
        model, x, y, norm=norm, epsilons=epsilons, attacks=cascade, seed=1
    )
    standard = standard_evaluation_curve(
        model, x, y, norm=norm, epsilons=epsilons, attacks=cascade, seed=1
    )
    assert (adaptive.accuracy <= standard.accuracy + 1e-12).all()
    for ours, theirs in zip(adaptive.evaluations, standard.evaluations, strict=True):
        assert ours.clean_accuracy == theirs.clean_accuracy
        broken = ~ours.robust
        # every example it counts is inside the ball and misclassified
        size = reference_norm(ours.x_adv - x, norm)
        assert (size[broken] <= ours.eps * (1 + 1e-6) + 1e-7).all()
        with torch.no_grad():
            assert (model(ours.x_adv[broken]).argmax(1) != y[broken]).all()
        # the masking checks fire where the standard cascade's do
        fired = {check.name for check in ours.checks if check.triggered}
        assert fired == {check.name for check in theirs.checks if check.triggered}
        if variant != "plain":
            assert "gradients" in fired and ours.warnings


def test_certified_points_are_not_attacked_and_no_attack_breaks_them():
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4)).double().eval()
    x = random_inputs(2, 30, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    report = adaptive_evaluation(model, x, y, eps=0.02, attacks=CASCADE)
    assert report.certified is not None and bool(report.certified.any())
    assert report.robust[report.certified].all()
    lead = report.stages[0]
    assert lead.attacked == int((~report.certified).sum())
    # soundness against an attack that was never told about the certificate
    strong = APGD(eps=0.02, steps=200, restarts=3, loss="dlr", seed=5)(
        model, x[report.certified], y[report.certified]
    )
    assert not strong.success.any()
    plain = adaptive_evaluation(model, x, y, eps=0.02, attacks=CASCADE, certify=False)
    assert plain.certified is None and plain.stages[0].attacked == 30
    assert plain.robust_accuracy == report.robust_accuracy


def test_an_unreadable_model_is_attacked_whole():
    class Opaque(nn.Module):  # GELU: no bound for it, so no certificate
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.GELU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = Opaque().double().eval()
    x = random_inputs(3, 10, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    report = adaptive_evaluation(model, x, y, eps=0.05, attacks=["apgd-ce"])
    assert report.certified is None  # no certificate: every correct point is attacked
    assert report.stages[0].attacked == 10


def test_the_curve_keeps_what_smaller_budgets_broke_and_the_chunk_round_trips():
    model = tiny_classifier(6, SHAPE, classes=4)
    x = random_inputs(6, 20, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    curve = adaptive_evaluation_curve(
        model, x, y, epsilons=[0.2, 0.05, 0.1], attacks=["apgd-ce", "apgd-t"], seed=2
    )
    assert curve.epsilons.tolist() == [0.05, 0.1, 0.2]
    for small, large in zip(curve.evaluations, curve.evaluations[1:], strict=False):
        kept = ~small.robust
        assert torch.equal(large.x_adv[kept], small.x_adv[kept])
        assert not (large.robust & ~small.robust).any()
    again = adaptive_evaluation_curve(
        model, x, y, epsilons=[0.05, 0.1, 0.2], attacks=["apgd-ce", "apgd-t"], seed=2
    )
    for a, b in zip(curve.evaluations, again.evaluations, strict=True):
        assert torch.equal(a.x_adv, b.x_adv) and a.broken_by == b.broken_by
    chunk = adaptive_chunk(model, x, y, epsilons=[0.05, 0.1], attacks=["apgd-ce"])
    back = CascadeChunk.from_json(chunk.to_json())
    assert back == chunk and back.budgets[0].certified == chunk.budgets[0].certified


def test_the_dlr_ratio_is_the_scaled_margin():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 5.0]])
    y = torch.tensor([0, 1])
    # (max other - z_y) / (z_(1) - z_(3)): (1 - 3) / (3 - 0); (5 - 2) / (5 - 1)
    assert torch.allclose(dlr_ratio(logits, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    assert torch.allclose(dlr_ratio(7.0 * logits + 2.0, y), dlr_ratio(logits, y))


def test_an_attack_starts_where_it_is_told():
    model = tiny_classifier(9, SHAPE, classes=4)
    x = random_inputs(9, 6, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    found = APGD(eps=0.3, steps=50, seed=0)(model, x, y)
    start = torch.where(found.success[:, None, None, None], found.x_adv, x)
    again = APGD(eps=0.3, steps=50, seed=0)(model, x, y, start=start)
    # a point started on an adversarial example is broken by its first evaluation
    assert again.success[found.success].all()
    assert again.forward_evals <= found.forward_evals
    with pytest.raises(InvalidArgumentError, match="start must be a tensor shaped like"):
        APGD(eps=0.3)(model, x, y, start=x[:2])
    with pytest.raises(InvalidArgumentError, match="FGSM takes no starting points"):
        FGSM(eps=0.3)(model, x, y, start=x)
