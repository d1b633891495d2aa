"""Certified bounds beside Wong and Kolter's own code, and CROWN's throughput on the digits CNN.

Prints, measured side by side in one run (absolute times on a shared machine mean little):

1. On the same model and points, vulnscope's IBP, CROWN, α-CROWN and Wong–Kolter dual
   beside ``convex-adversarial`` 0.4.4's ``DualNetwork(..., bounded_input=True)`` (the
   L∞ ball ∩ [0, 1] box): the mean over points of the worst margin bound (the one that
   decides the certificate), the points certified, and the time as a ratio to
   convex-adversarial's (median, min-max over rounds). Target: CROWN and the dual equal or
   tighter at most 0.5x its time. Two models: the digits MLP (``pretrained("digits-mlp")``,
   64-128-128-10) and a small CNN convex-adversarial can read (plain ``nn.Conv2d``, no
   pooling: conv 16 and conv 32, kernel 4, stride 2, ReLU, then the logits; 10 epochs of
   Adam on the 1,400 training digits, seed 0). Our dual must equal theirs (the largest
   difference is printed).
2. CROWN on the digits CNN of the audit (``pretrained("digits-cnn")``, with its max
   pooling) and its 397 test points: seconds per run and points certified.

Every contender runs once per round, in an order that rotates from round to round.

    python benchmarks/certify.py [--rounds 3] [--samples 397] [--eps 0.01,0.03]
        [--threads 1] [--no-alpha] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
from torch import Tensor, nn

from timing import timed_rounds
from vulnscope.certify import certify
from vulnscope.data import load_digits
from vulnscope.models import build_seeded, pretrained, train_classifier


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def _trained_small_cnn() -> nn.Module:
    train = load_digits("train")
    model = build_seeded(_small_cnn, 0)
    return train_classifier(model, train.x, train.y, epochs=10, batch_size=64, lr=2e-3, seed=0)


def _worst(margins: Tensor, labels: Tensor) -> Tensor:
    """Each point's smallest margin bound over the other classes."""
    mask = torch.nn.functional.one_hot(labels, margins.shape[1]).bool()
    return margins.masked_fill(mask, float("inf")).amin(dim=1)


def _compare(
    name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    rounds: int,
    *,
    alpha: bool,
) -> dict[str, object]:
    """Section 1 for one model and eps: bounds and time ratios to convex-adversarial."""
    from convex_adversarial import DualNetwork  # type: ignore[import-untyped]

    eye = torch.eye(10, dtype=x.dtype)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    margins: dict[str, Tensor] = {}

    def ours(method: str) -> Callable[[], None]:
        def run() -> None:
            margins[method] = certify(model, x, y, eps=eps, method=method).margins

        return run

    def theirs() -> None:
        with torch.no_grad():
            margins["convex-adversarial"] = DualNetwork(model, x, eps, bounded_input=True)(c)

    contenders = {"convex-adversarial": theirs}
    methods = ["ibp", "crown", "dual"] + (["alpha-crown"] if alpha else [])
    contenders.update({f"vulnscope {method}": ours(method) for method in methods})
    theirs()  # warm up the allocator and kernels
    times = timed_rounds(contenders, rounds)
    reference = _worst(margins["convex-adversarial"], y)
    others = ~torch.nn.functional.one_hot(y, 10).bool()
    difference = float((margins["dual"] - margins["convex-adversarial"])[others].abs().max())
    print(f"\n{name}, L∞ eps {eps}, {x.shape[0]} points, {rounds} rounds")
    print(f"{'contender':<24}{'mean worst margin':>18}{'certified':>11}{'time':>9}  ratio")
    record: dict[str, object] = {"dual_max_difference": difference}
    for label in contenders:
        key = label.removeprefix("vulnscope ")
        worst = _worst(margins[key], y) if key != "convex-adversarial" else reference
        ratios = [a / b for a, b in zip(times[label], times["convex-adversarial"], strict=True)]
        certified = int((worst > 0).sum())
        median = statistics.median(ratios)
        print(
            f"{label:<24}{float(worst.mean()):>18.4f}{certified:>11d}"
            f"{statistics.median(times[label]):>8.2f}s  {median:.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
        record[label] = {
            "mean_worst_margin": float(worst.mean()),
            "certified": certified,
            "seconds": statistics.median(times[label]),
            "ratio": median,
            "tighter_or_equal_points": int((worst >= reference - 1e-5).sum()),
        }
    print(f"largest |our dual - convex-adversarial| over all margins: {difference:.2e}")
    return record


def _throughput(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, rounds: int
) -> dict[str, float]:
    """Section 2: seconds of CROWN on all the points, and how many it certifies."""
    certified: list[int] = []

    def crown() -> None:
        certified.append(int(certify(model, x, y, eps=eps, method="crown").certified.sum()))

    seconds = timed_rounds({"crown": crown}, rounds)["crown"]
    print(
        f"L∞ eps {eps}: {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max "
        f"{max(seconds):.2f}), {certified[-1]} of {x.shape[0]} certified"
    )
    return {"seconds": statistics.median(seconds), "certified": certified[-1]}


def main() -> None:
    """Run both sections and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=397, help="test digits certified")
    parser.add_argument("--eps", default="0.01,0.03", help="L∞ radii, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-alpha", action="store_true", help="skip α-CROWN (the slowest)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_digits("test")
    x, y = test.x[: args.samples], test.y[: args.samples]
    radii = [float(value) for value in args.eps.split(",")]
    record: dict[str, object] = {"threads": args.threads, "samples": x.shape[0]}
    try:
        import convex_adversarial  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        print("convex-adversarial is not installed: section 1 is skipped")
    else:
        models = {"digits MLP": pretrained("digits-mlp"), "small CNN": _trained_small_cnn()}
        for name, model in models.items():
            accuracy = float((model(x).argmax(1) == y).float().mean())
            print(f"\n{name}: clean accuracy {accuracy:.1%}")
            for eps in radii:
                record[f"{name} eps {eps}"] = _compare(
                    name, model, x, y, eps, args.rounds, alpha=not args.no_alpha
                )
    cnn = pretrained("digits-cnn")
    print(f"\ndigits CNN (the audit's, max pooling), CROWN on {x.shape[0]} test points")
    for eps in radii:
        record[f"digits CNN crown eps {eps}"] = _throughput(cnn, x, y, eps, args.rounds)
    print("\ntargets: CROWN and the dual equal or tighter than convex-adversarial at <= 0.5x")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
