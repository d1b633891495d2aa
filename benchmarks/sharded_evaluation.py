"""The standard evaluation of the default model, as a user's script that torchrun can share.

The digits CNN on the 397-digit test split, under the default cascade at the audit's
default budgets (L∞ 0.05, 0.1, 0.2 and L2 0.25, 0.5, 1.0), in chunks of ``--batch-size``.
Run as it is, it is one process; under ``torchrun --nproc-per-node K`` the evaluation
functions share the chunks among the K ranks with no change to this script. Rank 0
writes ``OUT`` (JSON): each curve's summary, every point's ``broken_by``, and a SHA-256
of every adversarial example, so two runs can be compared field by field.

    python benchmarks/sharded_evaluation.py OUT [--batch-size 100] [--limit N]
    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_evaluation.py OUT

``benchmarks/workers_speed.py --functions`` times it with 1, 2 and 3 ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from vulnscope.data import load_digits
from vulnscope.distributed import rank_and_world
from vulnscope.evaluate import standard_evaluation_curve
from vulnscope.models import pretrained

BUDGETS = {"linf": [0.05, 0.1, 0.2], "l2": [0.25, 0.5, 1.0]}


def main() -> None:
    """Evaluate under both norms; rank 0 writes the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    model = pretrained("digits-cnn")
    test = load_digits("test")
    x, y = test.x[: args.limit], test.y[: args.limit]
    results = {}
    for norm, budgets in BUDGETS.items():
        curve = standard_evaluation_curve(
            model, x, y, norm=norm, epsilons=budgets, seed=0, batch_size=args.batch_size
        )
        results[norm] = {
            "curve": curve.to_dict(),
            "broken_by": [list(evaluation.broken_by) for evaluation in curve.evaluations],
            "x_adv_sha256": [
                hashlib.sha256(evaluation.x_adv.contiguous().numpy().tobytes()).hexdigest()
                for evaluation in curve.evaluations
            ],
        }
    if rank_and_world()[0] == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, sort_keys=True))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
