"""Models built so that an adversarial example provably exists inside eps.

Every attack that claims to be complete at that eps (any budgeted attack with enough
steps, and every minimal attack, capped at eps) must find one for every point. Two
models: the affine binary classifier, whose minimal perturbation is margin / |w|_* in
closed form, and a ReLU network whose positive class is the union of two half-spaces
(logits (0, max(a.x + c, b.x + d))): its decision boundary has a kink, and the class
flips once either half-space is reached, so eps above both distances guarantees it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.attacks import (
    APGD,
    BIM,
    FAB,
    FGSM,
    LBFGS,
    PGD,
    CarliniWagner,
    DeepFool,
    Square,
)

DUAL = {"linf": float("inf"), "l2": 2.0}
DIM = 10
BOUNDS = (-20.0, 20.0)

COMPLETE = {
    "FGSM": (("linf", "l2"), lambda norm, eps: FGSM(norm=norm, eps=eps, bounds=BOUNDS)),
    "BIM": (("linf", "l2"), lambda norm, eps: BIM(norm=norm, eps=eps, steps=20, bounds=BOUNDS)),
    "PGD": (("linf", "l2"), lambda norm, eps: PGD(norm=norm, eps=eps, steps=40, bounds=BOUNDS)),
    "APGD-CE": (("linf", "l2"), lambda norm, eps: APGD(norm=norm, eps=eps, bounds=BOUNDS)),
    "APGD-DLR-margin": (
        ("linf", "l2"),
        lambda norm, eps: APGD(norm=norm, eps=eps, loss="margin", bounds=BOUNDS),
    ),
    "DeepFool": (("linf", "l2"), lambda norm, eps: DeepFool(norm=norm, eps=eps, bounds=BOUNDS)),
    # C&W's learning rate is a fraction of the box (tanh space for L2): Adam's first step
    # moves every coordinate by about that fraction, and on a box 40 wide the default 0.01
    # crosses the boundary at once, far out; the binary search takes that overshoot for a
    # success at a c whose optimum is not adversarial. Scaled to the perturbations sought:
    "C&W": (
        ("linf", "l2"),
        lambda norm, eps: CarliniWagner(
            norm=norm, eps=eps, steps=200, learning_rate=0.001, bounds=BOUNDS
        ),
    ),
    "FAB": (("linf", "l2"), lambda norm, eps: FAB(norm=norm, eps=eps, bounds=BOUNDS)),
    "L-BFGS": (("l2",), lambda norm, eps: LBFGS(eps=eps, bounds=BOUNDS)),
    "Square": (("linf",), lambda norm, eps: Square(norm=norm, eps=eps, bounds=BOUNDS)),
}
CASES = [
    pytest.param(name, norm, id=f"{name}-{norm}")
    for name, (norms, _) in COMPLETE.items()
    for norm in norms
]


def _dual(w: torch.Tensor, norm: str) -> torch.Tensor:
    """|w|_* of the threat model's norm: |w|_1 for L∞, |w|_2 for L2."""
    return w.abs().sum(-1) if norm == "linf" else w.norm(dim=-1)


def _affine(margins: torch.Tensor, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(DIM, generator=generator, dtype=torch.float64)
    model = nn.Linear(DIM, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(DIM, dtype=torch.float64), w]))
        model.bias.zero_()
    x = torch.randn(margins.shape[0], DIM, generator=generator, dtype=torch.float64)
    x = x - ((x @ w + margins) / (w @ w))[:, None] * w  # w.x = -margin: class 0
    return model.eval(), x, w


class _TwoHalfSpaces(nn.Module):
    """Logits (0, max(a.x + c, b.x + d)) written with a ReLU: max(u, v) = v + relu(u - v)."""

    def __init__(self, a, c, b, d):
        super().__init__()
        self.a, self.c, self.b, self.d = a, c, b, d

    def forward(self, x):
        u, v = x @ self.a + self.c, x @ self.b + self.d
        score = v + torch.relu(u - v)
        return torch.stack([torch.zeros_like(score), score], dim=1)


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_finds_the_adversarial_that_provably_exists_on_an_affine_model(name, norm):
    margins = torch.tensor([0.2, 0.5, 1.0, 1.5], dtype=torch.float64)
    model, x, w = _affine(margins)
    minimal = margins / _dual(w, norm)
    eps = 1.05 * float(minimal.max())
    result = COMPLETE[name][1](norm, eps)(model, x, torch.zeros(4, dtype=torch.int64))
    assert result.success.all(), result.norms
    assert (result.norms >= minimal * (1 - 1e-6)).all()  # nothing smaller exists


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_finds_the_adversarial_that_provably_exists_behind_a_kink(name, norm):
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(DIM, generator=generator, dtype=torch.float64) for _ in range(2))
    model = _TwoHalfSpaces(a, -1.0, b, -1.5).eval()
    x = 0.05 * torch.randn(4, DIM, generator=generator, dtype=torch.float64)
    assert (model(x).argmax(1) == 0).all()
    distance = torch.minimum(-(x @ a - 1.0) / _dual(a, norm), -(x @ b - 1.5) / _dual(b, norm))
    far = torch.maximum(-(x @ a - 1.0) / _dual(a, norm), -(x @ b - 1.5) / _dual(b, norm))
    eps = 1.05 * float(far.max())
    result = COMPLETE[name][1](norm, eps)(model, x, torch.zeros(4, dtype=torch.int64))
    assert result.success.all(), result.norms
    assert (result.norms >= distance * (1 - 1e-6)).all()
