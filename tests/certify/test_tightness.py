"""How the methods order: α-CROWN >= CROWN always; CROWN >= IBP on normally trained nets only.

α-CROWN starts from CROWN's slopes and keeps each margin's best bound, so it is never
looser. CROWN is usually far tighter than IBP, but not always: its relaxation of an
unstable ReLU with slope 1 (``relu(a) >= a``) drops the fact that ``relu(a) >= 0``, which
IBP keeps, and on networks trained to make IBP tight (Gowal et al. 2018) that matters.
"""

from __future__ import annotations

import pytest
import torch
from certify_networks import Spec, build, points
from torch import Tensor, nn

from vulnscope.certify import certify
from vulnscope.certify.graph import read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import margin_bounds
from vulnscope.data import load_digits
from vulnscope.models import DigitsMLP, build_seeded


def worst(margins: Tensor) -> Tensor:
    """Each point's smallest margin bound (the one that decides the certificate): (N,)."""
    return margins.amin(dim=1)


@pytest.mark.parametrize(
    ("spec", "norm"),
    [
        *[
            (spec, norm)
            for spec in (
                Spec("mlp", "relu", "max", False, False, False, False, seed=1, width=16),
                Spec("cnn", "relu", "max", False, True, True, False, seed=2),
                Spec("cnn", "leaky_relu", "overlapping_max", True, False, False, True, seed=3),
                Spec("functional", "relu", "avg", False, False, False, False, seed=4),
            )
            for norm in ("linf", "l2")
        ],
        *[
            (Spec("mlp", name, "avg", False, False, True, False, seed=5), norm)
            for name, norm in zip(("elu", "tanh", "sigmoid"), ("linf", "l2", "linf"), strict=True)
        ],
    ],
    ids=lambda value: value if isinstance(value, str) else f"{value.kind}-{value.activation}",
)
def test_alpha_crown_is_never_looser_than_crown(spec, norm):
    model = build(spec, dtype=torch.float64)
    x = points(spec.seed, 4, dtype=torch.float64)
    labels = model(x).argmax(1).detach()
    eps = 0.1 if norm == "linf" else 0.5
    crown = certify(model, x, labels, norm=norm, eps=eps, method="crown").margins
    alpha = certify(model, x, labels, norm=norm, eps=eps, method="alpha-crown").margins
    finite = torch.isfinite(crown)
    assert bool((alpha[finite] >= crown[finite] - 1e-12).all())
    assert bool((worst(alpha) >= worst(crown) - 1e-12).all())


def test_alpha_crown_recovers_what_crown_s_slope_loses_and_ibp_keeps():
    """One unstable ReLU, ``a = 2x - 0.9`` on x in [0, 1], and the margin ``relu(a) + 1``.

    Exact minimum 1 (at any x with a <= 0). IBP: ``relu >= 0``, so 1. CROWN's adaptive
    lower slope is 1 (u = 1.1 >= -l = 0.9): ``relu(a) >= a >= -0.9``, so 0.1. The dual's
    slope u / (u - l) = 0.55 gives 1 - 0.495. α-CROWN moves the slope to 0: 1 again.
    """
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(-0.9)
        model[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x, label = torch.tensor([[0.5]], dtype=torch.float64), torch.tensor([0])
    bounds = {
        method: float(certify(model, x, label, eps=0.5, method=method).margins[0, 1])
        for method in ("ibp", "crown", "dual", "alpha-crown")
    }
    assert bounds["ibp"] == pytest.approx(1.0, abs=1e-12)
    assert bounds["crown"] == pytest.approx(0.1, abs=1e-12)
    assert bounds["dual"] == pytest.approx(1.0 - 0.55 * 0.9, abs=1e-12)
    assert bounds["alpha-crown"] == pytest.approx(1.0, abs=1e-3)


def _train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, ibp_eps: float = 0.0) -> None:
    """Full-batch Adam on the cross-entropy, plus IBP's worst-case loss when ``ibp_eps`` > 0.

    The IBP loss (Gowal et al. 2018) is the cross-entropy of the negated margin bounds,
    with eps ramped up over the first half; it goes through ``margin_bounds``'s gradient.
    """
    graph = read_graph(model, x[:8])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        if ibp_eps > 0:
            eps = ibp_eps * min(1.0, 2 * (step + 1) / steps)
            region = input_set(x, norm="linf", eps=eps, bounds=(0.0, 1.0))
            margins = margin_bounds(graph, region, y, method="ibp")
            loss = loss + nn.functional.cross_entropy(-margins.masked_fill(margins.isinf(), 0), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    train, test = load_digits("train"), load_digits("test")
    return train.x[:200], train.y[:200], test.x[:100], test.y[:100]


def test_crown_is_at_least_as_tight_as_ibp_on_a_normally_trained_mlp(digits):
    x, y, x_test, y_test = digits
    model = build_seeded(lambda: DigitsMLP(hidden=16), 0)
    _train(model, x, y, steps=40)
    for eps in (0.01, 0.05):
        ibp = certify(model, x_test, y_test, eps=eps, method="ibp")
        crown = certify(model, x_test, y_test, eps=eps, method="crown")
        assert bool((worst(crown.margins) >= worst(ibp.margins)).all())
        assert int(crown.certified.sum()) > int(ibp.certified.sum())


def test_on_an_ibp_trained_mlp_ibp_beats_crown_at_some_points(digits):
    x, y, x_test, y_test = digits
    model = build_seeded(lambda: DigitsMLP(hidden=16), 0)
    _train(model, x, y, steps=30, ibp_eps=0.1)
    ibp = certify(model, x_test, y_test, eps=0.1, method="ibp")
    crown = certify(model, x_test, y_test, eps=0.1, method="crown")
    tighter = worst(ibp.margins) > worst(crown.margins) + 1e-4
    assert int(tighter.sum()) >= 1  # 38 of 100 points at this seed
