"""The digits CNN's layout and pooling against PyTorch's plain layers, side by side.

``DigitsCNN`` runs its feature maps channels-last (its first convolution is a
``ChannelsLastConv2d``), pools its second convolution before the ReLU (the same
function), and pools through ``WindowMaxPool2d``: a running maximum of strided views
whenever no derivative can be asked for, PyTorch's vectorised channels-last kernel with
a scattering backward pass otherwise. Three models with the same weights are timed in
one run, in rotating rounds:

- *plain*: the textbook network, ``nn.Conv2d``, ReLU, then ``nn.MaxPool2d(2)``, in the
  plain (N, C, H, W) layout;
- *window pooling*: the same with ``WindowMaxPool2d`` (the digits CNN as it was before
  its layout and layer order changed);
- *DigitsCNN*: as shipped.

on

1. forward passes under ``torch.no_grad()`` on the 397 test digits;
2. forward and backward passes (the input gradient of the cross-entropy);
3. the standard L2 evaluation (APGD-CE, APGD-T, FAB-T, Square) at eps 0.5 on the first
   ``--samples`` test digits.

It prints each median and the speedups of ``DigitsCNN``, checks that the two plain-layout
models agree point by point, and prints how far the channels-last model's logits and
gradients are from the plain one's (floating-point rounding: the convolutions sum in
another order) and how many points' evaluations agree.

    python benchmarks/digits_cnn_speed.py [--rounds 3] [--samples 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed_rounds
from vulnscope.data import load_digits
from vulnscope.evaluate import StandardEvaluation, standard_evaluation
from vulnscope.models import pretrained

TEXTBOOK_ORDER = ("conv1", "relu1", "conv2", "relu2", "pool", "flatten", "fc", "relu3", "logits")
"""The layers in the usual order: each convolution's ReLU, then the pooling."""


def _textbook(model: nn.Module, pool: nn.Module) -> nn.Module:
    """The model's weights in plain layers and layout, each ReLU before the pooling."""
    layers = dict(copy.deepcopy(model).named_children())
    first = layers["conv1"]
    plain = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size, padding=1)
    plain.load_state_dict(first.state_dict())
    layers["conv1"], layers["pool"] = plain, pool
    return nn.Sequential(OrderedDict((name, layers[name]) for name in TEXTBOOK_ORDER)).eval()


def _same(a: StandardEvaluation, b: StandardEvaluation) -> bool:
    return (
        a.robust_accuracy == b.robust_accuracy
        and a.broken_by == b.broken_by
        and torch.equal(a.x_adv, b.x_adv)
    )


def main() -> None:
    """Time the three models and check what each computes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--passes", type=int, default=200, help="passes per round")
    args = parser.parse_args()
    fast = pretrained("digits-cnn")
    window = copy.deepcopy(fast.pool)
    models = {
        "plain": _textbook(fast, nn.MaxPool2d(2)),
        "window pooling": _textbook(fast, window),
        "DigitsCNN": fast,
    }
    data = load_digits("test")
    x, y = data.x[: args.samples], data.y[: args.samples]

    def forwards(model: nn.Module) -> None:
        with torch.no_grad():
            for _ in range(args.passes):
                model(data.x)

    def gradients(model: nn.Module) -> Tensor:
        for _ in range(args.passes):
            leaf = data.x.clone().requires_grad_()
            grad = torch.autograd.grad(functional.cross_entropy(model(leaf), data.y), leaf)[0]
        return grad

    results = {}

    def evaluate(name: str) -> None:
        results[name] = standard_evaluation(models[name], x, y, norm="l2", eps=0.5, seed=0)

    for title, contenders in (
        (
            f"{args.passes} no-grad forward passes, {len(data.x)} digits",
            {name: (lambda m=model: forwards(m)) for name, model in models.items()},
        ),
        (
            f"{args.passes} forward+backward passes, {len(data.x)} digits",
            {name: (lambda m=model: gradients(m)) for name, model in models.items()},
        ),
        (
            f"standard L2 evaluation, eps 0.5, {len(x)} digits",
            {name: (lambda n=name: evaluate(n)) for name in models},
        ),
    ):
        times = timed_rounds(contenders, args.rounds)
        medians = ", ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items())
        ours = times["DigitsCNN"]
        speedups = ", ".join(
            f"{statistics.median(a / b for a, b in zip(times[n], ours, strict=True)):.2f}x over {n}"
            for n in ("plain", "window pooling")
        )
        print(f"{title}: {medians}; DigitsCNN {speedups}", flush=True)
    with torch.no_grad():
        logits = (models["plain"](data.x) - fast(data.x)).abs().max().item()
    grad = (gradients(models["plain"]) - gradients(fast)).abs().max().item()
    print(
        f"DigitsCNN against plain, largest difference: logits {logits:.3g}, "
        f"input gradients {grad:.3g}"
    )
    plain, quick = results["plain"], results["DigitsCNN"]
    print(
        f"plain and window pooling identical point by point: "
        f"{_same(plain, results['window pooling'])}"
    )
    agree = (plain.robust == quick.robust).float().mean().item()
    print(
        f"DigitsCNN and plain: robust accuracy {quick.robust_accuracy:.1%} and "
        f"{plain.robust_accuracy:.1%}, the same outcome on {agree:.1%} of the points"
    )


if __name__ == "__main__":
    main()
