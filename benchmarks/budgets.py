"""How well the audit's data-chosen budgets fit: DeepFool's sizes against the cascade.

``vulnscope.audit.choose_budgets`` picks each norm's budgets, for data that names no known
set, from DeepFool's minimal perturbations scaled by ``DEEPFOOL_SCALE``. This script
measures, on models it builds itself:

1. the scale: at each quantile q of DeepFool's sizes (on the correctly classified points),
   the budget at which the cascade leaves a fraction 1 - q robust (log-interpolated
   between measured budgets), divided by DeepFool's quantile;
2. the bracket: the cascade's robust accuracy at the three budgets ``choose_budgets``
   picks, on the correctly classified points (the aim: about 85%, 50%, 15%), and for
   Fashion-MNIST at MNIST's conventional budgets, which the audit keeps beside them.

Models: the embedded digits CNN and MLP (397 test digits, shown to the choice under an
unknown source), and, when ``dataset-fashion-mnist`` is installed, a small 28x28 CNN
trained here on 6000 Fashion-MNIST images (its 8-bit test images get L∞ budgets in
multiples of 1/255).

    python benchmarks/budgets.py [--samples 200] [--attacks apgd-ce,apgd-t] [--json FILE]

The cascade defaults to APGD-CE and APGD-T (the standard cascade's two attacks that break
nearly every point it breaks; ``--attacks apgd-ce,apgd-t,fab-t,square`` for all four).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vulnscope.attacks import DeepFool
from vulnscope.audit.budgets import (
    CONVENTIONAL_BUDGETS,
    DEEPFOOL_SCALE,
    QUANTILES,
    choose_budgets,
)
from vulnscope.data import ImageData, load_digits, load_installed
from vulnscope.errors import MissingFileError
from vulnscope.evaluate import standard_evaluation_curve
from vulnscope.models import pretrained, train_classifier

PROBES = (0.15, 0.3, 0.5, 0.7, 0.85)
"""Quantiles of DeepFool's sizes at which the scale is measured."""


def _fashion_cnn(samples: int) -> tuple[nn.Module, ImageData] | None:
    try:
        train, test = load_installed("fashion-mnist", "train"), load_installed("fashion-mnist")
    except MissingFileError as error:
        print(f"fashion-mnist skipped: {error}")
        return None
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 5, 2, 2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, 2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 49, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    train_classifier(model, train.x[:6000], train.y[:6000], epochs=3, seed=0)
    return model, test.take(samples + 200)


def _measure(
    name: str,
    model: nn.Module,
    data: ImageData,
    samples: int,
    attacks: list[str],
    conventional: dict[str, tuple[float, ...]] | None = None,
) -> dict[str, object]:
    """The scale at each probe, and the cascade at the chosen (and conventional) budgets."""
    model.eval()
    # the choice sees points the evaluation does not: all but the last ``samples``
    seen = ImageData(data.x[:-samples], data.y[:-samples], data.num_classes, "npz:unknown")
    started = time.perf_counter()
    choice = choose_budgets(model, seen, None, seed=0, device=torch.device("cpu"))
    choose_seconds = time.perf_counter() - started
    x, y = data.x[-samples:], data.y[-samples:]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    clean = float(correct.float().mean())
    figures: dict[str, object] = {"clean": clean, "choose_seconds": round(choose_seconds, 2)}
    for norm in ("linf", "l2"):
        result = DeepFool(norm=norm, candidates=10)(model, x[correct], y[correct])
        sizes = result.norms.double().numpy()
        sizes[~result.success.numpy()] = np.inf
        grid = sorted({float(f"{0.9 * np.quantile(sizes, q):.3g}") for q in (0.1, *PROBES, 0.9)})
        chosen = choice[norm].epsilons
        others = list(conventional[norm]) if conventional is not None else []
        budgets = sorted({*grid, *chosen, *others})
        curve = standard_evaluation_curve(
            model, x[correct], y[correct], norm=norm, epsilons=budgets, seed=0, attacks=attacks
        )
        robust = {e.eps: e.robust_accuracy for e in curve.evaluations}
        measured = np.array([robust[eps] for eps in budgets])
        scale = {}
        for q in PROBES:
            # robust fraction decreases with the budget: interpolate log(eps) against it
            at = math.exp(np.interp(-(1 - q), -measured, np.log(budgets)))
            scale[f"{q:g}"] = round(at / float(np.quantile(sizes, q)), 3)
        figures[norm] = {
            "scale": scale,
            "budgets": choice[norm].labels,
            "how": choice[norm].how,
            "robust_share_of_clean": [round(robust[eps], 3) for eps in chosen],
            "conventional": {f"{eps:g}": round(robust[eps], 3) for eps in others},
        }
        print(
            f"{name} {norm}: cascade / DeepFool at quantiles "
            + ", ".join(f"{q}: {v:.2f}" for q, v in scale.items())
            + f"; budgets {', '.join(choice[norm].labels)} leave "
            + ", ".join(f"{robust[eps]:.0%}" for eps in chosen)
            + " of the correct points robust"
            + (
                "; the conventional "
                + ", ".join(f"{eps:g}" for eps in others)
                + " leave "
                + ", ".join(f"{robust[eps]:.0%}" for eps in others)
                if others
                else ""
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="points the cascade runs on")
    parser.add_argument("--attacks", default="apgd-ce,apgd-t", help="the cascade")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same figures on any machine
    attacks = args.attacks.split(",")
    print(
        f"choose_budgets: quantiles {QUANTILES} of DeepFool's sizes x {DEEPFOOL_SCALE}; "
        f"the cascade {args.attacks} on {args.samples} points the choice did not see"
    )
    digits = load_digits("test")
    models: dict[str, tuple[nn.Module, ImageData]] = {
        "digits-cnn": (pretrained("digits-cnn"), digits),
        "digits-mlp": (pretrained("digits-mlp"), digits),
    }
    fashion = _fashion_cnn(args.samples)
    if fashion is not None:
        models["fashion-cnn"] = fashion
    samples = min(args.samples, len(digits) - 100)
    mnist = CONVENTIONAL_BUDGETS["fashion-mnist"][1]
    figures = {
        name: _measure(
            name,
            model,
            data,
            samples if name != "fashion-cnn" else args.samples,
            attacks,
            mnist if name == "fashion-cnn" else None,
        )
        for name, (model, data) in models.items()
    }
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
