"""The digits CNN's value-only max pooling against PyTorch's kernel, side by side.

``WindowMaxPool2d`` computes max pooling as a running maximum of strided views whenever no
derivative can be asked for. This script times, in one run and in rotating rounds:

1. one forward pass of the digits CNN under ``torch.no_grad()`` on the 397 test digits,
   with its pooling as ``nn.MaxPool2d(2)`` and as ``WindowMaxPool2d(2)``;
2. the standard L2 evaluation (APGD-CE, APGD-T, FAB-T, Square) at eps 0.5 on the first
   ``--samples`` test digits with each pooling; the two evaluations must agree point by
   point (same robust accuracy, same attack breaking each point, same examples).

    python benchmarks/pooling_speed.py [--rounds 3] [--samples 100]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from timing import timed_rounds
from vulnscope.data import load_digits
from vulnscope.evaluate import standard_evaluation
from vulnscope.models import pretrained


def main() -> None:
    """Time both poolings and check that they give the same evaluation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--forwards", type=int, default=200, help="forward passes per round")
    args = parser.parse_args()
    fast = pretrained("digits-cnn")
    kernel = copy.deepcopy(fast)
    kernel.pool = nn.MaxPool2d(2)
    models = {"nn.MaxPool2d": kernel, "WindowMaxPool2d": fast}
    data = load_digits("test")
    x, y = data.x[: args.samples], data.y[: args.samples]

    def forwards(model: nn.Module) -> None:
        with torch.no_grad():
            for _ in range(args.forwards):
                model(data.x)

    results = {}

    def evaluate(name: str) -> None:
        results[name] = standard_evaluation(models[name], x, y, norm="l2", eps=0.5, seed=0)

    for title, contenders in (
        (f"{args.forwards} no-grad forward passes, {len(data.x)} digits",
         {name: (lambda m=model: forwards(m)) for name, model in models.items()}),
        (f"standard L2 evaluation, eps 0.5, {len(x)} digits",
         {name: (lambda n=name: evaluate(n)) for name in models}),
    ):  # fmt: skip
        times = timed_rounds(contenders, args.rounds)
        ratio = statistics.median(a / b for a, b in zip(*times.values(), strict=True))
        medians = ", ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items())
        print(f"{title}: {medians}; speedup {ratio:.2f}x")
    slow, quick = results["nn.MaxPool2d"], results["WindowMaxPool2d"]
    same = (
        slow.robust_accuracy == quick.robust_accuracy
        and slow.broken_by == quick.broken_by
        and torch.equal(slow.x_adv, quick.x_adv)
    )
    print(f"evaluations identical point by point: {same} "
          f"(robust accuracy {quick.robust_accuracy:.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
