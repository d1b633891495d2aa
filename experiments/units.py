"""Units against random directions, and counterfactuals against adversarial examples.

Szegedy et al. (2014), section 3, on the digits CNN's hidden layers (``fc``: 128 units;
``conv2``: 32 channels, each averaged over space): label purity and centred-cosine
coherence of the top-k test digits of each unit and of as many random directions, with
95% bootstrap intervals, the random k-subset floor, and units minus random directions.
Then Dombrowski et al.'s counterfactuals in the digits flow's latent coordinates beside
FAB's smallest targeted L2 adversarial examples, on the first test digits, each towards
the class ``(y + 1) mod 10``: reach rate, median L2 distance, median flow log-likelihood
(nats per image; the inputs' own for comparison).

    python experiments/units.py [--top 10] [--points 50] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from vulnscope.data import load_digits
from vulnscope.explain.counterfactual import counterfactual
from vulnscope.explain.flow_training import pretrained_flow
from vulnscope.explain.units import compare_directions, unit_analysis
from vulnscope.models import pretrained


def _interval(estimate: Any) -> str:
    return f"{estimate.mean:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"


def _units(model: torch.nn.Module, data: Any, top: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for layer in ("fc", "conv2"):
        units = unit_analysis(model, data, layer=layer, top=top, seed=0)
        random = unit_analysis(model, data, layer=layer, directions="random", top=top, seed=1)
        difference = compare_directions(units, random, seed=2)
        rows[layer] = {
            "units": len(units.purity),
            "purity": {
                "units": units.purity_estimate.to_dict(),
                "random": random.purity_estimate.to_dict(),
                "subsets": units.baseline_purity,
                "difference": difference.purity.to_dict(),
            },
            "coherence": {
                "units": units.coherence_estimate.to_dict(),
                "random": random.coherence_estimate.to_dict(),
                "subsets": units.baseline_coherence,
                "difference": difference.coherence.to_dict(),
            },
        }
        for score in ("purity", "coherence"):
            print(
                f"{layer:6s} {score:9s} units {_interval(getattr(units, score + '_estimate'))}  "
                f"random {_interval(getattr(random, score + '_estimate'))}  "
                f"subsets {getattr(units, 'baseline_' + score):+.3f}  "
                f"units - random {_interval(getattr(difference, score))}"
            )
    return rows


def _counterfactuals(model: torch.nn.Module, data: Any, points: int) -> dict[str, Any]:
    flow = pretrained_flow()
    x, y = data.x[:points], data.y[:points]
    start = time.perf_counter()
    result = counterfactual(model, flow, x, (y + 1) % 10)
    seconds = time.perf_counter() - start
    if result.adversarial is None:
        raise RuntimeError("counterfactual ran without its default attack")
    rows: dict[str, Any] = {
        "points": points,
        "seconds": seconds,
        "input_log_prob_median": float(result.input_log_prob.median()),
    }
    print(
        f"{'':16s} reach  median L2  median log p (nats)   [inputs: "
        f"{rows['input_log_prob_median']:.1f}]"
    )
    for name, figures in (
        ("counterfactual", result.counterfactual),
        ("adversarial", result.adversarial),
    ):
        rows[name] = {
            "reach_rate": float(figures.reached.float().mean()),
            "median_l2": float(figures.distance.median()),
            "median_log_prob": float(figures.log_prob.median()),
        }
        print(
            f"{name:16s} {rows[name]['reach_rate']:.2f}   {rows[name]['median_l2']:.3f}     "
            f"{rows[name]['median_log_prob']:.1f}"
        )
    likelier = result.counterfactual.log_prob > result.adversarial.log_prob
    rows["counterfactual_likelier_fraction"] = float(likelier.float().mean())
    print(
        f"counterfactual likelier than the adversarial example on "
        f"{int(likelier.sum())}/{points} points ({seconds:.1f} s)"
    )
    return rows


def main() -> None:
    """Print both tables (and write them as JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, data = pretrained("digits-cnn"), load_digits("test")
    record = {
        "units": _units(model, data, args.top),
        "counterfactuals": _counterfactuals(model, data, args.points),
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
