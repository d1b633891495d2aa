"""Exact verification by MILP on the digits MLP: the share of points decided in time.

Trains the 64-32-32-10 digits MLP (``DigitsMLP(hidden=32)``, the ``digits-mlp`` recipe:
40 epochs of Adam at 2e-3, batches of 64, seed 0) and verifies the first ``--samples``
test digits at L∞ ``--eps`` with ``vulnscope.certify.verify`` (APGD-CE falsifies, CROWN
verifies, the MILP of Tjeng et al. 2019 decides the rest, ``--time-limit`` seconds per
point). Target: at least 95% of the points decided. Prints

1. the verdicts of ``verify``: the share decided, verified / falsified / unknown, and the
   seconds per point (total, median, max), beside CROWN's certified count and APGD-CE's
   robust count (the bracket the exact answer falls in);
2. with ``--milp-alone`` (the default), the MILP by itself on every point and every other
   class, without the attack and the certificate before it: its share decided and its
   seconds, to show what the solver itself can do.

    python benchmarks/verify_milp.py [--samples 100] [--eps 0.05] [--time-limit 30]
        [--threads 1] [--no-milp-alone] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections import Counter

import torch
from torch import Tensor, nn

from vulnscope.attacks import APGD
from vulnscope.certify import certify, milp
from vulnscope.certify.graph import read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import node_bounds
from vulnscope.certify.verification import verify
from vulnscope.data import load_digits
from vulnscope.models import DigitsMLP, build_seeded, train_classifier


def _train(seed: int) -> nn.Module:
    train = load_digits("train")
    model = build_seeded(lambda: DigitsMLP(hidden=32), seed)
    return train_classifier(model, train.x, train.y, epochs=40, batch_size=64, lr=2e-3, seed=seed)


def _seconds(values: list[float]) -> dict[str, float]:
    return {"total": sum(values), "median": statistics.median(values), "max": max(values)}


def _milp_alone(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, time_limit: float
) -> tuple[Counter[str], list[float]]:
    """The MILP on every point and every other class, with CROWN's node bounds only."""
    exact = copy.deepcopy(model).double()
    x64 = x.double()
    graph = read_graph(exact, x64)
    with torch.no_grad():
        nodes = node_bounds(graph, input_set(x64, norm="linf", eps=eps, bounds=(0.0, 1.0)))
    counts: Counter[str] = Counter()
    seconds = []
    classes = int(model(x[:1]).shape[1])
    for k in range(x.shape[0]):
        started = time.perf_counter()
        flat = [(low[k].flatten().numpy(), high[k].flatten().numpy()) for low, high in nodes]
        others = [j for j in range(classes) if j != int(y[k])]
        outcome = milp.solve_point(graph, flat, int(y[k]), others, time_limit=time_limit)
        seconds.append(time.perf_counter() - started)
        counts[outcome.status] += 1
    return counts, seconds


def main() -> None:
    """Train the MLP, verify the test points, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per point")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="of the training and the attack")
    parser.add_argument("--no-milp-alone", dest="milp_alone", action="store_false")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _train(args.seed)
    test = load_digits("test")
    x, y = test.x[: args.samples], test.y[: args.samples]
    with torch.no_grad():
        clean = float((model(test.x).argmax(1) == test.y).float().mean())
    print(f"64-32-32-10 digits MLP: clean accuracy {clean:.3f} on {len(test.y)} test digits")

    started = time.perf_counter()
    result = verify(model, x, y, eps=args.eps, time_limit=args.time_limit, seed=args.seed)
    wall = time.perf_counter() - started
    counts = Counter(result.status)
    decided = (counts["verified"] + counts["falsified"]) / args.samples
    certified = int(certify(model, x, y, eps=args.eps, method="crown").certified.sum())
    attacked = int((~APGD(eps=args.eps, seed=args.seed)(model, x, y).success).sum())
    seconds = _seconds(list(result.seconds))
    print(
        f"verify, L∞ eps {args.eps}, {args.samples} points, {args.time_limit:g} s each: "
        f"decided {decided:.1%} (target >= 95%): verified {counts['verified']}, "
        f"falsified {counts['falsified']}, unknown {counts['unknown']}; "
        f"{wall:.1f} s wall, per point median {seconds['median']:.3f} s, "
        f"max {seconds['max']:.2f} s"
    )
    print(
        f"  bracket: CROWN certifies {certified}, exact {counts['verified']} "
        f"(+{counts['unknown']} unknown), APGD-CE leaves {attacked} robust"
    )
    for reason in sorted({r for r in result.reasons if r}):
        print(f"  unknown: {reason}")
    record: dict[str, object] = {
        "clean_accuracy": clean,
        "eps": args.eps,
        "samples": args.samples,
        "time_limit": args.time_limit,
        "verify": {**counts, "decided": decided, "wall": wall, "seconds": seconds},
        "crown_certified": certified,
        "apgd_robust": attacked,
    }
    if args.milp_alone:
        alone, alone_seconds = _milp_alone(model, x, y, eps=args.eps, time_limit=args.time_limit)
        share = (alone["verified"] + alone["falsified"]) / args.samples
        times = _seconds(alone_seconds)
        print(
            f"MILP alone (every point, all 9 other classes, CROWN node bounds): decided "
            f"{share:.1%}: verified {alone['verified']}, falsified {alone['falsified']}, "
            f"unknown {alone['unknown']}; {times['total']:.1f} s, per point median "
            f"{times['median']:.3f} s, max {times['max']:.2f} s"
        )
        record["milp_alone"] = {**alone, "decided": share, "seconds": times}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
