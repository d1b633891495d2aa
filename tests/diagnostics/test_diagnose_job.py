"""The ``vulnscope diagnose`` job and command: the record agrees with the functions it reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vulnscope.cli import main
from vulnscope.data import load_digits
from vulnscope.diagnostics import input_fisher, input_hessian_eigenvalues
from vulnscope.diagnostics.job import run_diagnostics


def _no_nan(value):
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_no_nan(v) for v in value)
    if isinstance(value, dict):
        return all(_no_nan(v) for v in value.values())
    return True


@pytest.fixture(scope="module")
def record(tmp_path_factory, digits_cnn):
    out = tmp_path_factory.mktemp("diagnose")
    data = load_digits("test")
    result = run_diagnostics(digits_cnn, data, out, samples=12, k=3, sections=2, seed=5)
    return result, out, data


def test_the_record_is_written_and_holds_only_finite_numbers_or_null(record):
    result, out, _ = record
    on_disk = json.loads((out / "diagnostics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert _no_nan(on_disk)
    for name in ("spectra", "distances", "amplification", "sections"):
        path = out / on_disk["figures"][name]
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_record_reports_what_the_functions_compute_on_its_sample(record, digits_cnn):
    result, _, data = record
    indices = torch.tensor(result["data"]["indices"])
    assert len(indices) == 12 and len(set(indices.tolist())) == 12
    x, y = data.x[indices], data.y[indices]
    fisher = input_fisher(digits_cnn, x, k=3, seed=5)
    torch.testing.assert_close(
        torch.tensor(result["fisher"]["eigenvalues"], dtype=torch.float64),
        fisher.eigenvalues,
        rtol=1e-6,
        atol=1e-12,
    )
    hessian = input_hessian_eigenvalues(digits_cnn, x, y, k=3, seed=5)
    torch.testing.assert_close(
        torch.tensor(result["hessian"]["eigenvalues"], dtype=torch.float64),
        hessian.eigenvalues,
        rtol=1e-5,
        atol=1e-10,
    )
    correct = (digits_cnn(x).argmax(1) == y).double().mean()
    assert result["clean_accuracy"] == pytest.approx(float(correct))


def test_distances_are_consistent_with_the_model(record, digits_cnn):
    result, _, data = record
    x = data.x[torch.tensor(result["data"]["indices"])]
    fisher = input_fisher(digits_cnn, x, k=1, seed=5).eigenvectors[:, 0]
    distances = result["class_change_distance"]["fisher"]["per_sample"]
    start = digits_cnn(x).argmax(1)
    for i, distance in enumerate(distances):
        if distance is None or distance == 0:
            continue
        # Just past the reported distance, one of the two signs has changed the class;
        # well before it, neither has.
        after = [
            digits_cnn(x[i : i + 1] + s * (distance + 1e-3) * fisher[i : i + 1]) for s in (1, -1)
        ]
        before = [
            digits_cnn(x[i : i + 1] + s * 0.9 * distance * fisher[i : i + 1]) for s in (1, -1)
        ]
        assert any(int(a.argmax()) != int(start[i]) for a in after)
        assert all(int(b.argmax()) == int(start[i]) for b in before)
    measured = result["curvature_bounds"]["measured"]
    for name in ("fisher", "gradient", "hessian"):
        for m, d in zip(measured, result["class_change_distance"][name]["per_sample"], strict=True):
            assert m is None or d is None or m <= d + 1e-12


def test_the_same_seed_gives_the_same_record(tmp_path, digits_cnn):
    data = load_digits("test")
    first = run_diagnostics(digits_cnn, data, tmp_path / "a", samples=4, k=2, sections=1, seed=1)
    second = run_diagnostics(digits_cnn, data, tmp_path / "b", samples=4, k=2, sections=1, seed=1)
    assert first == second


def test_the_command_prints_a_summary_and_writes_the_record(tmp_path, capsys, digits_cnn):
    out = tmp_path / "d"
    assert main(["diagnose", "--samples", "6", "--sections", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input Fisher" in printed and "distance to a class change" in printed
    assert (out / "diagnostics.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--samples", "0"],
            "vulnscope diagnose: error: argument --samples: expected a number >= 1",
        ),
        (["--max-distance", "-1"], "vulnscope diagnose: error: argument --max-distance: expected"),
        (["--k", "x"], "vulnscope diagnose: error: argument --k: expected a whole number"),
    ],
)
def test_bad_usage_is_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["diagnose", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "vulnscope-diagnose").exists()


def test_a_missing_model_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["diagnose", "--model", "nope.pt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vulnscope: error:") and len(err.splitlines()) == 1
