"""Every method's margin bounds hold at every input of the set that sampling and attacks find.

A certificate is tested against the network, never against itself: over random tiny
networks of every layer type certify reads, random points and budgets, in L∞ and L2, each
bound of ``logit[label] - logit[j]`` must lie below that margin at random points of the
ball ∩ box and at the points PGD (targeted, on the margin) and APGD reach inside it; and a
point certified must be broken by none of them. CROWN-IBP, the bound provable training
minimises, is held to the same standard.
"""

from __future__ import annotations

import pytest
import torch
from certify_networks import (
    ACTIVATIONS,
    CLASSES,
    POOLS,
    Spec,
    build,
    margins_at,
    points,
    sample_set,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from vulnscope.attacks import APGD, PGD
from vulnscope.certify import METHODS, certify
from vulnscope.certify.graph import read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import margin_bounds

ROUNDING = 1e-5
"""Violations allowed, relative to the logits' scale (float32 rounding of the bounds)."""

specs = st.builds(
    Spec,
    kind=st.sampled_from(["mlp", "cnn", "functional"]),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    pool=st.sampled_from(sorted(POOLS)),
    channels_last=st.booleans(),
    residual=st.booleans(),
    batch_norm=st.booleans(),
    normalized=st.booleans(),
    seed=st.integers(0, 10_000),
    width=st.sampled_from([4, 16]),  # 16: CROWN bounds the second layer forward (32 inputs)
)


def attacked_points(
    model: nn.Module, x: Tensor, labels: Tensor, *, norm: str, eps: float, seed: int
) -> list[Tensor]:
    """Points of the set found by PGD towards each other class (margin loss) and by APGD."""
    found = []
    for shift in range(1, CLASSES):
        target = (labels + shift) % CLASSES
        attack = PGD(norm=norm, eps=eps, steps=10, loss="margin", targeted=True, seed=seed)
        found.append(attack(model, x, labels, target=target).x_adv)
    apgd = APGD(norm=norm, eps=eps, steps=10, loss="margin", early_stop=False, seed=seed)
    found.append(apgd(model, x, labels).x_adv)
    return found


def empirical_margins(
    model: nn.Module, x: Tensor, labels: Tensor, *, norm: str, eps: float, seed: int
) -> Tensor:
    """The smallest margin seen at each point over samples and attacks: (N, C)."""
    generator = torch.Generator().manual_seed(seed)
    samples = sample_set(x, norm=norm, eps=eps, count=32, generator=generator)
    candidates = [*samples, *attacked_points(model, x, labels, norm=norm, eps=eps, seed=seed)]
    for candidate in candidates:  # the references must be inside the set they test
        distance = (candidate - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
        assert bool((distance <= eps * (1 + 1e-5)).all())
        assert bool((candidate >= 0).all() and (candidate <= 1).all())
    return torch.stack([margins_at(model, c, labels) for c in candidates]).amin(0)


def check_soundness(spec: Spec, norm: str, size: float, seed: int) -> None:
    """Every method's bounds lie below the margins reached, and nothing certified breaks."""
    model = build(spec)
    eps = size if norm == "linf" else 4 * size  # an L2 ball as wide as the L∞ one, roughly
    x = points(seed, 3)
    with torch.no_grad():
        labels = model(x).argmax(1)
    labels[2] = (labels[2] + 1) % CLASSES  # a misclassified point: negative margins
    reached = empirical_margins(model, x, labels, norm=norm, eps=eps, seed=seed)
    with torch.no_grad():
        scale = 1.0 + model(x).abs().amax()
    others = ~torch.nn.functional.one_hot(labels, CLASSES).bool()
    broken = (reached.masked_fill(~others, 1.0) <= 0).any(dim=1)
    for method in METHODS:
        result = certify(model, x, labels, norm=norm, eps=eps, method=method)
        assert bool(torch.isinf(result.margins[~others]).all())
        excess = (result.margins - reached)[others]
        assert float(excess.max()) <= ROUNDING * float(scale), (method, spec)
        assert not bool((result.certified & broken).any()), (method, spec)
        assert not bool(result.certified[2]), method  # its own label loses at the centre
    # CROWN-IBP, the training bound (Zhang et al. 2020), is not a certify method
    region = input_set(x, norm=norm, eps=eps, bounds=(0.0, 1.0))
    with torch.no_grad():
        crown_ibp = margin_bounds(read_graph(model, x), region, labels, method="crown-ibp")
    assert float((crown_ibp - reached)[others].max()) <= ROUNDING * float(scale), spec


@settings(max_examples=8, deadline=None)
@given(
    spec=specs,
    norm=st.sampled_from(["linf", "l2"]),
    size=st.sampled_from([0.01, 0.05, 0.2]),
    seed=st.integers(0, 10_000),
)
def test_every_method_bounds_the_margins_that_samples_and_attacks_reach(spec, norm, size, seed):
    check_soundness(spec, norm, size, seed)


@pytest.mark.parametrize(
    ("spec", "norm", "size"),
    [
        (Spec("cnn", "relu", "max", False, True, False, False, seed=0), "linf", 0.2),
        (Spec("cnn", "tanh", "window_max", True, True, True, False, seed=1), "l2", 0.05),
        (Spec("cnn", "leaky_relu", "overlapping_max", False, True, False, True, 2), "linf", 0.2),
        (Spec("cnn", "sigmoid", "avg", True, False, True, True, seed=3), "linf", 0.05),
        (Spec("mlp", "elu", "max", False, False, True, False, seed=4, width=16), "l2", 0.05),
        (Spec("functional", "relu", "max", False, False, False, True, 5, width=16), "linf", 0.05),
    ],
    ids=["residual", "residual-bn-l2", "overlapping", "avg-bn", "mlp-bn-l2", "functional"],
)
def test_every_layer_type_is_bounded_soundly(spec, norm, size):
    """The random search may miss a layer type in a short run; these cover every one."""
    check_soundness(spec, norm, size, spec.seed)


@pytest.mark.parametrize("method", METHODS)
def test_a_linear_network_s_linf_bound_is_reached_at_a_corner(method):
    """On a linear map every method is exact for L∞: the bound equals the worst corner."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(32, CLASSES)).double().eval()
    x, eps = points(1, 2, dtype=torch.float64), 0.1
    labels = model(x).argmax(1).detach()
    result = certify(model, x, labels, eps=eps, method=method)
    weights = model[1].weight.detach()
    for n in range(2):
        for j in range(CLASSES):
            if j == labels[n]:
                continue
            row = (weights[labels[n]] - weights[j]).view(x.shape[1:])
            worst = torch.where(row > 0, (x[n] - eps).clamp(min=0), (x[n] + eps).clamp(max=1))
            expected = margins_at(model, worst.unsqueeze(0), labels[n : n + 1])[0, j]
            assert float(result.margins[n, j]) == pytest.approx(float(expected), abs=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_a_max_pool_s_upper_bound_is_the_largest_upper_bound_in_its_window(method):
    """``y = max(x1 + 0.5, 2 x1 - 2 x2 + 2 x3)`` over the box [0.2, 0.8]^3.

    The first element has the larger lower bound (0.7 against -0.8) but the second can
    rise higher (2.8 against 1.3): y lies in [0.7, 2.8], both ends reached at corners of
    the box. With logits ``(2 - 2y, 0)`` the margins' exact minima are 2 - 2 * 2.8 = -3.6
    (label 0) and 2 * 0.7 - 2 = -0.6 (label 1); every method must find them exactly.
    """
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(3, 4),
        nn.Unflatten(1, (1, 2, 2)),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1, 2),
    ).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0], [2, -2, 2], [0, 0, 0], [0, 0, 0]]))
        model[1].bias.copy_(torch.tensor([0.5, 0.0, -5.0, -5.0]))
        model[5].weight.copy_(torch.tensor([[-2.0], [0.0]]))
        model[5].bias.copy_(torch.tensor([2.0, 0.0]))
    x = torch.full((2, 1, 1, 3), 0.5, dtype=torch.float64)
    result = certify(model.eval(), x, torch.tensor([0, 1]), eps=0.3, method=method)
    assert float(result.margins[0, 1]) == pytest.approx(-3.6, abs=1e-12)
    assert float(result.margins[1, 0]) == pytest.approx(-0.6, abs=1e-12)
