"""The digits CNN's value-only max pooling against PyTorch's kernel, side by side.

``DigitsCNN`` pools through ``WindowMaxPool2d``: a running maximum of strided views
whenever no derivative can be asked for (PyTorch's CPU kernel is slow on small NCHW
maps), ``nn.MaxPool2d`` otherwise. The *plain* contender is the same layers and weights
with ``nn.MaxPool2d(2)``. In one run and in rotating rounds, this script times:

1. forward passes under ``torch.no_grad()`` on the 397 test digits;
2. forward and backward passes (the input gradient of the cross-entropy): the same
   path in both, a control;
3. the standard L2 evaluation (APGD-CE, APGD-T, FAB-T, Square) at eps 0.5 on the first
   ``--samples`` test digits; the two evaluations must agree point by point.

It also prints the largest difference between the two models' logits and input
gradients.

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
from vulnscope.evaluate import standard_evaluation
from vulnscope.models import pretrained


def _plain(model: nn.Module) -> nn.Module:
    layers = dict(copy.deepcopy(model).named_children())
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(OrderedDict(layers)).eval()


def main() -> None:
    """Time both poolings and check that they compute the same thing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--passes", type=int, default=200, help="passes per round")
    args = parser.parse_args()
    fast = pretrained("digits-cnn")
    models = {"plain": _plain(fast), "DigitsCNN": fast}
    data = load_digits("test")
    x, y = data.x[: args.samples], data.y[: args.samples]

    def forwards(model: nn.Module) -> None:
        with torch.no_grad():
            for _ in range(args.passes):
                model(data.x)

    def gradients(model: nn.Module) -> Tensor:
        for _ in range(args.passes):
            leaf = data.x.clone().requires_grad_()
            functional.cross_entropy(model(leaf), data.y).backward()
        assert leaf.grad is not None
        return leaf.grad

    results = {}

    def evaluate(name: str) -> None:
        results[name] = standard_evaluation(models[name], x, y, norm="l2", eps=0.5, seed=0)

    for title, contenders in (
        (f"{args.passes} no-grad forward passes, {len(data.x)} digits",
         {name: (lambda m=model: forwards(m)) for name, model in models.items()}),
        (f"{args.passes} forward+backward passes, {len(data.x)} digits",
         {name: (lambda m=model: gradients(m)) for name, model in models.items()}),
        (f"standard L2 evaluation, eps 0.5, {len(x)} digits",
         {name: (lambda n=name: evaluate(n)) for name in models}),
    ):  # fmt: skip
        times = timed_rounds(contenders, args.rounds)
        ratio = statistics.median(a / b for a, b in zip(*times.values(), strict=True))
        medians = ", ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items())
        print(f"{title}: {medians}; speedup {ratio:.2f}x", flush=True)
    with torch.no_grad():
        logits = (models["plain"](data.x) - fast(data.x)).abs().max().item()
    grad = (gradients(models["plain"]) - gradients(fast)).abs().max().item()
    print(f"largest difference: logits {logits:.3g}, input gradients {grad:.3g}")
    slow, quick = results["plain"], results["DigitsCNN"]
    same = (
        slow.robust_accuracy == quick.robust_accuracy
        and slow.broken_by == quick.broken_by
        and torch.equal(slow.x_adv, quick.x_adv)
    )
    print(f"evaluations identical point by point: {same} "
          f"(robust accuracy {quick.robust_accuracy:.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
