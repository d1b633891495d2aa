"""Does denoising pre-training help a classifier on the digits? SDAE vs SAE vs from scratch.

Run:  OMP_NUM_THREADS=1 python experiments/sdae_pretraining.py [--out DIR] [--seeds 5] [--quick]

Vincent, Larochelle, Lajoie, Bengio and Manzagol (2010), "Stacked denoising
autoencoders", Table 3: a deep sigmoid network whose layers are pre-trained as denoising
autoencoders (SDAE) reaches a lower test error after supervised fine-tuning than the same
network pre-trained as ordinary autoencoders (SAE, no corruption) or trained from a random
initialisation. Here on the 8x8 digits, sigmoid layers ``--sizes`` (default 64-128-128-128,
the paper's three hidden layers, narrower): for each seed, the same initial weights are

- pre-trained layer-wise with masking noise ν = ``--level`` on the 1400 training images
  (labels unused), then fine-tuned under a softmax layer on the labels (SDAE);
- the same with ν = 0 (SAE);
- fine-tuned directly (from scratch);

each fine-tuned on all 1400 labels, and again on the first ``--labels`` of them only (the
unlabelled images still pre-train: the semi-supervised case pre-training is meant for),
for as many Adam steps as on all labels (``--finetune-epochs`` scaled by 1400 / n). The
test error is on the 397 test images; each cell gives the mean over seeds with its 95 %
Student-t interval, and the last rows the paired (same seed) differences of the errors.
Writes ``DIR/sdae_pretraining.json`` (default ``experiment-sdae-pretraining``) and prints
the Markdown table. About two and a half minutes on one thread (``--quick``: two seeds,
fewer epochs, under half a minute).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from vulnscope._io import write_json_atomic
from vulnscope._statistics import mean_interval
from vulnscope.data import load_digits
from vulnscope.defences.sdae import StackedDenoisingAutoencoder
from vulnscope.defences.sdae_training import fit_sdae, sdae_classifier

ARMS = ("SDAE", "SAE (no corruption)", "from scratch")
DIFFERENCES = (("SDAE", "SAE (no corruption)"), ("SDAE", "from scratch"))
"""Paired by seed: the arms of one seed share their initial weights and minibatch order."""


def test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of ``x`` that ``model`` misclassifies."""
    with torch.no_grad():
        return float((model(x).argmax(1) != y).double().mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every arm at every seed and label count; the raw errors and their intervals."""
    train, test = load_digits("train"), load_digits("test")
    label_counts = (train.x.shape[0], args.labels)
    errors: dict[str, dict[str, list[float]]] = {
        str(n): {arm: [] for arm in ARMS} for n in label_counts
    }
    started = time.perf_counter()
    for seed in range(args.seeds):
        stacks = {}
        for arm, level in (("SDAE", args.level), ("SAE (no corruption)", 0.0)):
            stacks[arm] = fit_sdae(
                StackedDenoisingAutoencoder(sizes=args.sizes, seed=seed),
                train.x,
                corruption="masking",
                level=level,
                epochs=args.epochs,
                finetune_epochs=0,
                seed=seed,
            )
        stacks["from scratch"] = StackedDenoisingAutoencoder(sizes=args.sizes, seed=seed)
        for n in label_counts:
            for arm in ARMS:
                classifier = sdae_classifier(
                    stacks[arm],
                    train.x[:n],
                    train.y[:n],
                    epochs=math.ceil(args.finetune_epochs * label_counts[0] / n),
                    seed=seed,
                )
                errors[str(n)][arm].append(test_error(classifier, test.x, test.y))
        logging.info("seed %d done at %.0f s", seed, time.perf_counter() - started)
    return {
        "settings": {
            "sizes": list(args.sizes),
            "masking_level": args.level,
            "pretraining_epochs_per_layer": args.epochs,
            "finetuning_epochs_at_all_labels": args.finetune_epochs,
            "seeds": args.seeds,
            "label_counts": list(label_counts),
        },
        "errors": errors,
        "intervals": {
            n: {arm: mean_interval(values).to_dict() for arm, values in by_arm.items()}
            for n, by_arm in errors.items()
        },
        "paired_differences": {
            n: {
                f"{a} - {b}": mean_interval(
                    [u - v for u, v in zip(by_arm[a], by_arm[b], strict=True)]
                ).to_dict()
                for a, b in DIFFERENCES
            }
            for n, by_arm in errors.items()
        },
        "seconds": time.perf_counter() - started,
    }


def table(record: dict[str, Any]) -> str:
    """Test error (%) per arm and label count, mean ± 95 % half-width over seeds.

    Then the paired differences of the errors (percentage points; negative: SDAE better).
    """
    counts = list(record["intervals"])
    lines = [
        "| pre-training | " + " | ".join(f"test error, {n} labels (%)" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    rows = [("intervals", arm) for arm in ARMS]
    rows += [("paired_differences", f"{a} - {b}") for a, b in DIFFERENCES]
    for key, arm in rows:
        cells = []
        for n in counts:
            cell = record[key][n][arm]
            half = cell["half_width"]
            spread = "" if half is None else f" ± {100 * half:.1f}"
            cells.append(f"{100 * cell['mean']:.1f}{spread}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, run, write the JSON and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiment-sdae-pretraining"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 128, 128])
    parser.add_argument("--level", type=float, default=0.25, help="masking probability ν")
    parser.add_argument("--epochs", type=int, default=20, help="pre-training epochs per layer")
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--labels", type=int, default=100, help="the small labelled subset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 5 + 10 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs = 2, 5, 10
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    record = run(args)
    path = write_json_atomic(args.out / "sdae_pretraining.json", record)
    print(table(record))
    print(f"\n{args.seeds} seeds, {record['seconds']:.0f} s; written to {path}")


if __name__ == "__main__":
    main()
