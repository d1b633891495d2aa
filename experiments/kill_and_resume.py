"""SIGKILL an audit at random moments, resume it each time, and compare with an uninterrupted run.

Run:  VULNSCOPE_CACHE_DIR=/tmp/vcache python experiments/kill_and_resume.py [--kills 20]
          [--out DIR] [--seed 0] [-- AUDIT OPTIONS...]

1. Runs ``vulnscope audit`` once without interruption (the reference), timing it.
2. Runs ``vulnscope audit --resume`` into another directory ``--kills`` times, each time
   sending SIGKILL at a moment drawn uniformly from [0.2 s, the reference's duration]
   (from a generator seeded with ``--seed``), then once more to completion.
3. Compares the two ``results.json`` field by field (all but ``created``, ``timing`` and
   the per-attack ``attack_seconds``), and prints every difference; exits 1 if there is
   any.

The audit options after ``--`` default to ``--batch-size 50 --attacks apgd-ce,apgd-dlr
--linf-eps 0.05,0.1 --l2-eps 0.5,1``: every stage of the audit, the robustness and minimal
stages in eight chunks of the 397 test digits, a minute or two per run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vulnscope.audit import CLOCK_FIELDS

DEFAULT_AUDIT = [
    "--batch-size",
    "50",
    "--attacks",
    "apgd-ce,apgd-dlr",
    "--linf-eps",
    "0.05,0.1",
    "--l2-eps",
    "0.5,1",
]


def _differences(expected: Any, got: Any, where: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(got, dict):
        found = []
        for key in sorted(set(expected) | set(got)):
            if key in CLOCK_FIELDS:
                continue
            if key not in expected or key not in got:
                found.append(f"{where}/{key}: present on one side only")
            else:
                found += _differences(expected[key], got[key], f"{where}/{key}")
        return found
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        return [
            d
            for i, (a, b) in enumerate(zip(expected, got, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]


def main() -> None:
    """Reference run, killed runs, final run, comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("experiment-kill-and-resume"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("audit", nargs="*", help="options passed to vulnscope audit (after --)")
    args = parser.parse_args()
    options = args.audit or DEFAULT_AUDIT
    command = [sys.executable, "-m", "vulnscope", "audit", *options]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    reference, resumed = args.out / "reference", args.out / "resumed"
    started = time.perf_counter()
    subprocess.run(
        [*command, "--out", str(reference)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    duration = time.perf_counter() - started
    print(f"reference run: {duration:.1f} s")
    draw = random.Random(args.seed)
    kills = 0
    mismatches: list[str] = []
    while kills < args.kills:
        (resumed / "results.json").unlink(missing_ok=True)
        process = subprocess.Popen(
            [*command, "--out", str(resumed), "--resume"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        moment = draw.uniform(0.2, duration)
        try:
            process.wait(timeout=moment)
            early = _differences(
                json.loads((reference / "results.json").read_text()),
                json.loads((resumed / "results.json").read_text()),
            )
            print(
                f"run finished before the kill at {moment:.1f} s (equal to the reference: "
                f"{not early}); starting over"
            )
            mismatches += early
            continue
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        kills += 1
        pieces = [
            path.stem
            for path in (resumed / ".checkpoint").glob("*.json")
            if path.name != "manifest.json"
        ]
        print(f"kill {kills:2d} at {moment:5.1f} s: {len(pieces)} piece(s) on disk")
    subprocess.run(
        [*command, "--out", str(resumed), "--resume"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    expected = json.loads((reference / "results.json").read_text())
    got = json.loads((resumed / "results.json").read_text())
    differences = _differences(expected, got) + mismatches
    for line in differences:
        print(line)
    print(f"{args.kills} kills; results.json equal field by field: {not differences}")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
