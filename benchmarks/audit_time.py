"""Wall time of ``vulnscope audit`` as a user runs it: the default, and ``--quick``.

The issue's targets are absolute (the default audit of the digits CNN in at most 3
minutes on the 2-core machine, ``--quick`` in at most 30 s), so this script reports wall
times, with each stage's share from ``results.json``; run it on an otherwise idle machine.
The digits CNN is trained into the cache first, so no run pays for training (a first run
on a fresh machine adds the training, about 10 s). Each configuration runs ``--rounds``
times, alternating; the median is printed.

    python benchmarks/audit_time.py [--rounds 1] [--threads N] [--out DIR]
        [--options "--workers 1"]

By default the runs are ``vulnscope audit`` as typed, with ``OMP_NUM_THREADS`` unset:
``--workers auto``, one worker process of one thread per core. ``--options`` are added
to both configurations (``--workers 1``: one process, all the cores as threads);
``--threads`` sets ``OMP_NUM_THREADS`` (each worker's threads, and fewer workers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"default": 180.0, "quick": 30.0}


def _run(options: list[str], out: Path, threads: int | None) -> tuple[float, dict[str, float]]:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vulnscope", "audit", *options, "--out", str(out)],
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    stages: dict[str, float] = json.loads((out / "results.json").read_text())["timing"]["stages"]
    return wall, stages


def main() -> None:
    """Warm the cache, then time both configurations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the runs (default: unset, as a user runs it)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--options", default="", help="more audit options, for both runs")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="audit-time-"))
    subprocess.run(
        [sys.executable, "-c", "from vulnscope.models import pretrained; pretrained('digits-cnn')"],
        check=True,
    )
    extra = shlex.split(args.options)
    configurations = {"default": extra, "quick": ["--quick", *extra]}
    walls: dict[str, list[float]] = {name: [] for name in configurations}
    for round_ in range(args.rounds):
        for name, options in configurations.items():
            wall, stages = _run(options, out / f"{name}-{round_}", args.threads)
            walls[name].append(wall)
            shares = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items())
            print(f"{name:8s} round {round_}: {wall:6.1f} s wall ({shares})", flush=True)
    for name, values in walls.items():
        median = statistics.median(values)
        verdict = "met" if median <= TARGETS[name] else "missed"
        print(f"{name:8s}: median {median:.1f} s; target {TARGETS[name]:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
