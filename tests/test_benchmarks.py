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


def test_rg_speed_benchmark_runs_and_agrees_with_its_bare_references(tmp_path):
    out = tmp_path / "figures.json"
    script = ROOT / "benchmarks" / "rg_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "stability_matrix" in done.stdout and "sample_up" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["coarse_covariance_max_error"] < 1e-4
    assert max(figures["label_probs_max_difference"].values()) < 1e-4
    assert all(ratio["median"] > 0 for ratio in figures["ratio"].values())


def test_diagnostics_speed_benchmark_runs_and_agrees_with_its_bare_references(
    tmp_path, digits_cnn, isolated_cache
):
    out = tmp_path / "figures.json"
    script = ROOT / "benchmarks" / "diagnostics_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache},
    )
    assert done.returncode == 0, done.stderr
    assert "input_fisher" in done.stdout and "input_hessian_eigenvalues" in done.stdout
    figures = json.loads(out.read_text())
    agreement = figures["agreement"]
    assert agreement["fisher_top_eigenvalue_relative_error"] < 1e-4
    assert agreement["fisher_loop_jacobian_max_difference"] < 1e-5
    assert agreement["hessian_top_eigenvalue"]["float64_relative"] < 1e-4
    assert agreement["hessian_top_eigenvalue"]["float32_relative_to_largest"] < 1e-4
    assert all(ratio["median"] > 0 for ratio in figures["ratio"].values())
    distances = figures["distances"]
    assert distances["images"] > 0
    for name in ["fisher v1, nearer sign", "gradient, + sign"]:
        assert 0 < distances[name]["median"] <= distances["max_step"]
    assert 0 <= distances["random"]["failed"] <= 1


def test_attacks_benchmark_runs_every_section(tmp_path, digits_cnn, isolated_cache):
    out = tmp_path / "figures.json"
    script = ROOT / "benchmarks" / "attacks_vs_peers.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "--repeats",
            "1",
            "--samples",
            "6",
            "--cw-steps",
            "5",
            "--cw-searches",
            "2",
            "--cw-models",
            "digits-cnn",
            "--cascade-norms",
            "linf",
            "--cascade-steps",
            "5",
            "--square-queries",
            "100",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache},
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"cw", "deepfool", "cascade", "jsma"}
    for norm in ("l2", "linf"):
        assert figures["deepfool"][norm]["vulnscope"]["success"] == 1.0  # uncapped, complete
    assert 0.0 <= figures["cw"]["digits-cnn"]["vulnscope"]["success"] <= 1.0
    # JSMA changes at most gamma = 10% of the 64 pixels (rounded down to pairs: 6)
    assert figures["jsma"]["vulnscope"]["changed_fraction"] <= 6 / 64 + 1e-9
    for entry in figures["cascade"].values():
        assert 0.0 <= entry["robust_accuracy"]["vulnscope"] <= 1.0


def test_defences_speed_benchmark_runs(digits_cnn, isolated_cache):
    script = ROOT / "benchmarks" / "defences_speed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "1", "--epochs", "1", "--samples", "64"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    for row in ("bare PGD training", "vulnscope pgd_training", "vulnscope TRADES"):
        assert row in done.stdout
