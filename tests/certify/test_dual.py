"""The dual method equals Wong and Kolter's own code, ``convex-adversarial`` (0.4.4).

Their ``DualNetwork(net, X, eps, bounded_input=True)`` bounds ``c . f(x')`` from below over
the L∞ ball ∩ [0, 1] box; with ``c = e_y - e_j`` these are the margin bounds. Ours computes
them as a backward pass with each ReLU's lower slope equal to its upper one (and
intermediate bounds by the same pass, layer by layer): the same numbers, to rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.certify import certify

convex_adversarial = pytest.importorskip("convex_adversarial")


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 24),
        nn.ReLU(),
        nn.Linear(24, 24),
        nn.ReLU(),
        nn.Linear(24, 10),
    )


def cnn() -> nn.Sequential:
    # kernel 4, stride 2, padding 1: the layers of Wong and Kolter's MNIST network, whose
    # transposed convolutions convex-adversarial computes without output padding
    return nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


@pytest.mark.parametrize("factory", [mlp, cnn])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps", [0.02, 0.1, 0.4])
def test_the_dual_equals_convex_adversarial_with_the_box(factory, dtype, eps):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = factory().to(dtype).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 8, 8, generator=generator, dtype=dtype)
    x[0] = (x[0] > 0.5).to(dtype)  # every pixel on a face of the box
    labels = torch.randint(0, 10, (5,), generator=generator)
    with torch.no_grad():
        labels[:3] = model(x[:3]).argmax(1)  # certified at the small eps; the rest are not
    eye = torch.eye(10, dtype=dtype)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
    with torch.no_grad():
        dual = convex_adversarial.DualNetwork(model, x, eps, bounded_input=True)
        reference = dual(c)
    ours = certify(model, x, labels, eps=eps, method="dual")
    others = c.abs().sum(-1) > 0
    assert bool(torch.isinf(ours.margins[~others]).all())
    torch.testing.assert_close(ours.margins[others], reference[others], rtol=0, atol=1e-5)
    certified = (reference.masked_fill(~others, 1.0) > 1e-5).all(dim=1)
    assert bool((ours.certified == certified).all())


def test_the_dual_is_not_crown():
    """A check on the check: CROWN's adaptive slopes give other (here tighter) bounds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = mlp().double().eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = model(x).argmax(1).detach()
    dual = certify(model, x, labels, eps=0.1, method="dual").margins
    crown = certify(model, x, labels, eps=0.1, method="crown").margins
    finite = torch.isfinite(dual)
    assert float((crown[finite] - dual[finite]).abs().max()) > 1e-3
