"""The benchmark scripts keep running (their figures are read by people, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pgd_benchmark_runs_and_every_installed_implementation_agrees(
    tmp_path, digits_cnn, isolated_cache
):
    out = tmp_path / "figures.json"
    script = ROOT / "benchmarks" / "pgd_vs_peers.py"
    done = subprocess.run(
        [sys.executable, str(script), "--repeats", "1", "--samples", "40", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache},
    )
    assert done.returncode == 0, done.stderr
    assert "vulnscope" in done.stdout
    if out.exists():  # written when at least one peer is installed
        figures = json.loads(out.read_text())
        accuracies = figures["robust_accuracy"].values()
        assert max(accuracies) - min(accuracies) <= 1 / 40 + 1e-9
