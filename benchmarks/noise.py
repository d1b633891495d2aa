"""Random and semi-random noise against adversarial robustness, beside Fawzi et al.'s prediction.

Fawzi, Moosavi-Dezfooli and Frossard (2016), "Robustness of classifiers: from adversarial
to random noise": the smallest random-noise perturbation that changes the class is about
sqrt(d) times the minimal adversarial one, and inside a random m-dimensional subspace
about sqrt(d/m) times. On the digits CNN and its PGD-trained version (d = 64), for the
first test digits the model gets right, this prints the median ratio of each regime next
to the prediction, and how close it comes (median ratio / prediction):

    python benchmarks/noise.py [--samples 100] [--directions 20] [--threads 1] [--json FILE]

One DeepFool run per model gives the adversarial norms every regime divides by; no input
box (Fawzi et al.'s setting, ``noise_robustness``'s default).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from vulnscope.data import load_digits
from vulnscope.defences.digits import defend_digits
from vulnscope.models import pretrained
from vulnscope.perturbations.noise import noise_robustness

SUBSPACES = (8, 16, 32)


def _models() -> dict[str, torch.nn.Module]:
    return {
        "digits-cnn": pretrained("digits-cnn"),
        "digits-cnn-pgd": defend_digits("pgd").model,
    }


def _measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: Any) -> list[dict]:
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    random = noise_robustness(model, x, y, kind="random", directions=args.directions, seed=0)
    rows.append(_row(random, time.perf_counter() - start))
    for m in SUBSPACES:
        start = time.perf_counter()
        semi = noise_robustness(
            model,
            x,
            y,
            kind="semi-random",
            subspace_dim=m,
            adversarial_norms=random.adversarial_norms,
            seed=0,
        )
        rows.append(_row(semi, time.perf_counter() - start))
    return rows


def _row(result: Any, seconds: float) -> dict[str, Any]:
    finite = torch.isfinite(result.ratios)
    return {
        "kind": result.kind,
        "m": result.subspace_dim,
        "predicted": result.predicted,
        "median_ratio": result.median_ratio,
        "closeness": result.median_ratio / result.predicted,
        "quartiles": [float(q) for q in result.ratios[finite].quantile(torch.tensor([0.25, 0.75]))],
        "not_found": int((~finite & result.correct).sum()),
        "median_adversarial_norm": float(result.adversarial_norms[result.correct].median()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--directions", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_digits("test")
    figures: dict[str, Any] = {"samples": args.samples, "directions": args.directions}
    header = f"{'model':16} {'noise':12} {'m':>3} {'pred':>6} {'median':>7} {'ratio/pred':>10}"
    print(header + f" {'IQR':>13} {'none':>4} {'adv L2':>7} {'s':>6}")
    for name, model in _models().items():
        with torch.no_grad():
            correct = model(test.x).argmax(1) == test.y
        x, y = test.x[correct][: args.samples], test.y[correct][: args.samples]
        rows = _measure(model, x, y, args)
        figures[name] = rows
        for row in rows:
            m = "-" if row["m"] is None else str(row["m"])
            low, high = row["quartiles"]
            print(
                f"{name:16} {row['kind']:12} {m:>3} {row['predicted']:6.2f} "
                f"{row['median_ratio']:7.2f} {row['closeness']:10.2f} "
                f"{low:6.2f}-{high:6.2f} {row['not_found']:4d} "
                f"{row['median_adversarial_norm']:7.3f} {row['seconds']:6.1f}"
            )
    print(f"d = {math.prod(test.x.shape[1:])}; ratio/pred = median ratio / prediction")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
