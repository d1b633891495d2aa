"""The audit's record is the same, field by field, whatever the number of workers.

Left to themselves, one process would run on every core and two workers on half of them
each; a model's float32 results can depend on the thread count (MKL splits a small
batch's matrix products among the threads), so the minimal perturbations' norms, and
their mean and quantiles, moved by an ulp between ``--workers 1`` and ``--workers 2``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vulnscope.audit import without_clock

_AUDIT = ["audit", "--quick", "--stages", "minimal", "--limit", "20", "--batch-size", "10"]
"""Two chunks of DeepFool: batches small enough for a thread-dependent matrix product."""


def _record(workers: int, out: Path, cache: str) -> dict:  # type: ignore[type-arg]
    torchrun = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    # the CLI chooses the threads, as for a user who did not set OMP_NUM_THREADS
    unset = (*torchrun, "OMP_NUM_THREADS")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    done = subprocess.run(
        [sys.executable, "-m", "vulnscope", *_AUDIT, "--workers", str(workers), "--out", str(out)],
        env={**env, "VULNSCOPE_CACHE_DIR": cache},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def test_one_and_two_workers_write_the_same_record(tmp_path, isolated_cache, digits_cnn):
    # digits_cnn: the model is trained (or loaded) into the cache once, not by each run
    alone = _record(1, tmp_path / "alone", isolated_cache)
    shared = _record(2, tmp_path / "shared", isolated_cache)
    assert alone["minimal_perturbations"]["mean_found"] is not None
    assert without_clock(shared) == without_clock(alone)
