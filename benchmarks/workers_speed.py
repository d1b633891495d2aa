"""Sharded evaluations: K worker processes against one, and the same result whatever K.

Issue 9's figures: on the 2-core machine, the standard evaluation of the default model
(the digits CNN, the 397-digit test split, the default L∞ and L2 budgets and cascade,
``vulnscope audit --stages linf,l2``) with 2 worker processes of one thread each,
against 1 process of one thread: a speedup of at least 1.8x; and the records of 1, 2 and
3 workers identical field by field (all but the creation time and the durations).

Each configuration is a fresh ``vulnscope audit`` process, so the workers' start-up
(each imports torch and loads the model) is included. Run it on an otherwise idle
machine: the 1-worker run takes about 8 minutes.

With ``--functions`` the same evaluation is a user's script calling
``standard_evaluation_curve`` (``benchmarks/sharded_evaluation.py``), run by ``python``
for one worker and by ``torchrun --standalone --nproc-per-node K`` for K; its results
(every point's ``broken_by`` and adversarial example) are compared instead.

    python benchmarks/workers_speed.py [--workers 1,2,3] [--batch-size N] [--limit N]
                                       [--functions]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vulnscope.audit import without_clock


def main() -> None:
    """Time the audit's ``--stages linf,l2`` (or the functions) with each number of workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--functions",
        action="store_true",
        help="time the evaluation functions under torchrun, not the audit",
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="workers-speed-"))
    subprocess.run(
        [sys.executable, "-c", "from vulnscope.models import pretrained; pretrained('digits-cnn')"],
        check=True,
    )
    chunking = []  # options both the audit and the script take
    if args.batch_size is not None:
        chunking += ["--batch-size", str(args.batch_size)]
    if args.limit is not None:
        chunking += ["--limit", str(args.limit)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process
    walls: dict[int, float] = {}
    records: dict[int, Any] = {}
    for workers in (int(part) for part in args.workers.split(",")):
        target = out / f"workers-{workers}"
        if args.functions:
            script = [
                str(Path(__file__).with_name("sharded_evaluation.py")),
                str(target / "results.json"),
                *chunking,
            ]
            launcher = (
                [sys.executable]
                if workers == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc-per-node",
                    str(workers),
                ]
            )
            command = [*launcher, *script]
        else:
            command = [
                sys.executable,
                "-m",
                "vulnscope",
                "audit",
                "--stages",
                "linf,l2",
                *chunking,
                "--workers",
                str(workers),
                "--out",
                str(target),
            ]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        walls[workers] = time.perf_counter() - started
        records[workers] = json.loads((target / "results.json").read_text())
        print(f"{workers} worker(s), one thread each: {walls[workers]:.1f} s wall", flush=True)
    if 1 in walls:
        for workers, wall in walls.items():
            if workers > 1:
                print(f"speedup of {workers} workers over 1: {walls[1] / wall:.2f}x")
        first = without_clock(records[1])
        for workers, record in records.items():
            same = without_clock(record) == first
            what = "results" if args.functions else "record"
            print(f"{what} of {workers} worker(s) equal 1 worker's, field by field: {same}")


if __name__ == "__main__":
    main()
