"""MagNet on the digits against an oblivious and an adaptive attacker.

Run:  OMP_NUM_THREADS=1 VULNSCOPE_CACHE_DIR=/tmp/vcache python experiments/magnet.py \
          [--out DIR] [--seed 0]

Meng and Chen (2017), "MagNet: a two-pronged defense against adversarial examples",
against Carlini and Wagner (2017), "MagNet and 'Efficient defenses against adversarial
attacks' are not robust to adversarial examples". The model is the one
``vulnscope defend --method magnet`` writes (:func:`vulnscope.defences.digits.defend_digits`):
the first 1000 of the 1400 training images train the digits CNN (the ``digits-cnn``
recipe) and MagNet's denoising autoencoder, and the last 400, held out, fit the
detectors' thresholds (total false-positive rate ``--fpr``,
split evenly over the four detectors: reconstruction error L1 and L2, Jensen-Shannon
divergence at T = 10 and 40). On the 397 test images it measures:

- oblivious attacker (crafted against the bare CNN): PGD L∞ at eps = 0.1 (100 steps),
  and Carlini-Wagner L2 at confidence κ = 0 and κ = 10 (about the CNN's median clean
  logit margin; the paper's detectors are meant to catch such large perturbations);
- adaptive attacker (crafted against the whole pipeline): PGD L∞ at eps = 0.1 on the
  reformed margin with a penalty on every detector's score above its threshold
  (:class:`~vulnscope.defences.magnet_evaluation.AdaptiveMagNetAttack`, 100 steps at each
  of four penalty weights).

"Defended" counts the adversarial inputs a detector flags or the reformed CNN still
classifies correctly. Writes ``DIR/magnet.json`` (default ``experiment-magnet``) and
prints the Markdown table. About two minutes on one thread.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from vulnscope._io import write_json_atomic
from vulnscope.attacks import PGD, CarliniWagner
from vulnscope.data import load_digits
from vulnscope.defences.digits import MAGNET_FPR, MAGNET_VALIDATION, defend_digits
from vulnscope.defences.magnet import MagNet, fit_magnet
from vulnscope.defences.magnet_evaluation import (
    AdaptiveMagNetAttack,
    MagNetEvaluation,
    evaluate_adaptive,
    evaluate_oblivious,
)

COLUMNS = (
    ("attacker", "attacker"),
    ("attack", "attack"),
    ("clean acc. bare / pipeline", None),
    ("clean FPR", "clean_false_positive_rate"),
    ("fools bare CNN", "bare_success_rate"),
    ("detected", "detection_rate"),
    ("acc. on undetected", "undetected_accuracy"),
    ("defended", "defended_fraction"),
    ("median dist.", "median_norm"),
)


def table(rows: list[tuple[str, MagNetEvaluation]]) -> str:
    """The results as a Markdown table, one row per attack."""
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for name, result in rows:
        record = result.to_dict()
        cells = []
        for _, key in COLUMNS:
            if key is None:
                cells.append(f"{result.clean_accuracy:.3f} / {result.pipeline_accuracy:.3f}")
            elif key == "attack":
                cells.append(name)
            elif isinstance(record[key], float):
                cells.append(f"{record[key]:.3f}")
            elif record[key] is None:
                cells.append("–")
            else:
                cells.append(str(record[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Train, fit, attack, write ``magnet.json`` and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiment-magnet"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fpr", type=float, default=MAGNET_FPR)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    train, test = load_digits("train"), load_digits("test")
    # the model `vulnscope defend --method magnet` writes: CNN and autoencoder trained on
    # the first 1000 training images, thresholds fitted on the last 400
    magnet = defend_digits("magnet", seed=args.seed).model
    assert isinstance(magnet, MagNet)
    if args.fpr != MAGNET_FPR:
        validation = train.x[-MAGNET_VALIDATION:]
        magnet = fit_magnet(magnet.classifier, magnet.autoencoder, validation, fpr=args.fpr)
    trained = time.perf_counter() - started
    logging.info("trained and fitted in %.0f s; thresholds %s", trained, magnet.thresholds_)

    attacks: list[tuple[str, Any]] = [
        (f"PGD L∞ {args.eps:g}", PGD(eps=args.eps, steps=100, seed=args.seed)),
        ("C&W L2, κ=0", CarliniWagner()),
        # κ = 10, about the median clean margin, needs larger steps to get there
        (
            "C&W L2, κ=10",
            CarliniWagner(
                confidence=10.0, initial_const=1.0, learning_rate=0.1, binary_search_steps=5
            ),
        ),
    ]
    rows: list[tuple[str, MagNetEvaluation]] = []
    for name, attack in attacks:
        rows.append((name, evaluate_oblivious(magnet, test.x, test.y, attack)))
        logging.info("oblivious %s done at %.0f s", name, time.perf_counter() - started)
    adaptive = AdaptiveMagNetAttack(eps=args.eps, steps=100, seed=args.seed)
    rows.append((f"PGD L∞ {args.eps:g}", evaluate_adaptive(magnet, test.x, test.y, adaptive)))
    runtime = time.perf_counter() - started

    record = {
        "experiment": "magnet",
        "seed": args.seed,
        "fpr": args.fpr,
        "validation_images": MAGNET_VALIDATION,
        "detectors": dict(zip(magnet.detector_names, magnet.thresholds_.tolist(), strict=True)),
        "results": [{"name": name, **result.to_dict()} for name, result in rows],
        "runtime_s": round(runtime, 1),
        "threads": args.threads,
    }
    path = write_json_atomic(args.out / "magnet.json", record)
    print(table(rows))
    print(f"\n{len(test.y)} test images; runtime {runtime:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
