from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vulnscope.audit import without_clock
from vulnscope.cli import main


def _audit(tmp_path, *extra):
    return main(["audit", "--out", str(tmp_path / "out"), *extra])


def _check_record(record, *, samples, epsilons, norm="linf"):
    assert record["schema_version"] == 3 and isinstance(record["vulnscope_version"], str)
    assert record["data"]["samples"] == samples
    assert record["settings"]["epsilons"][norm] == epsilons
    assert 0.0 <= record["clean_accuracy"] <= 1.0
    curve = record["robustness"][norm]
    assert curve["epsilons"] == epsilons
    values = curve["accuracy"]
    assert all(0.0 <= v <= record["clean_accuracy"] + 1e-12 for v in values)
    assert values == sorted(values, reverse=True)  # epsilons given in increasing order
    for evaluation, value in zip(curve["evaluations"], values, strict=True):
        broken = sum(evaluation["broken_by"].values())
        assert value == pytest.approx(1 - broken / samples)


def test_audit_on_the_default_writes_valid_results(tmp_path, capsys, digits_cnn):
    assert _audit(tmp_path, "--limit", "30", "--stages", "linf", "--linf-eps", "0.05,0.2") == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    _check_record(record, samples=30, epsilons=[0.05, 0.2])
    assert record["model"] == {
        "name": "digits-cnn",
        "parameters": 71754,
        "num_classes": 10,
        "kind": "classifier",
        "metadata": None,
    }
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "APGD-T" in out and "Square" in out
    assert "results.json" in out and "report.html" in out and "verdict:" in out
    assert record["settings"]["attacks"] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    assert record["settings"]["stages"] == ["linf"]
    assert set(record) >= {"robustness", "verdict", "figures"} and "spectra" not in record
    assert (tmp_path / "out" / "report.html").is_file()
    assert record["figures"] == {"robust_accuracy": "robust_accuracy.png"}


def test_audit_is_reproducible_with_a_seed(tmp_path, digits_cnn):
    records = []
    for run in ("a", "b"):
        command = [
            "audit",
            "--out",
            str(tmp_path / run),
            "--limit",
            "40",
            "--stages",
            "linf,minimal,dangerous",
            "--linf-eps",
            "0.1",
            "--seed",
            "3",
            "--quick",
            "--workers",
            "1",
        ]
        assert main(command) == 0
        records.append(without_clock(json.loads((tmp_path / run / "results.json").read_text())))
    assert records[0] == records[1]


def test_audit_runs_the_attacks_it_is_given_in_order(tmp_path, capsys, digits_cnn):
    assert (
        _audit(
            tmp_path,
            "--limit",
            "30",
            "--stages",
            "linf",
            "--linf-eps",
            "0.1",
            "--attacks",
            "DeepFool,apgd-ce",
        )
        == 0
    )
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    _check_record(record, samples=30, epsilons=[0.1])
    assert record["settings"]["attacks"] == ["DeepFool", "APGD-CE"]
    stages = record["robustness"]["linf"]["evaluations"][0]["stages"]
    assert [stage["name"] for stage in stages[:2]] == ["DeepFool", "APGD-CE"]
    assert stages[1]["attacked"] == stages[0]["attacked"] - stages[0]["broken"]


def test_audit_l2_uses_l2_defaults(tmp_path, digits_cnn):
    assert _audit(tmp_path, "--limit", "20", "--stages", "l2", "--attacks", "apgd-ce") == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(record["robustness"]) == ["l2"]
    assert record["robustness"]["l2"]["epsilons"] == [0.25, 0.5, 1.0]
    _check_record(record, samples=20, epsilons=[0.25, 0.5, 1.0], norm="l2")


def test_audit_on_an_npz_file(tmp_path, digits_cnn, digits_test):
    np.savez(tmp_path / "d.npz", x=digits_test.x[:30].numpy(), y=digits_test.y[:30].numpy())
    assert (
        _audit(
            tmp_path,
            "--data",
            str(tmp_path / "d.npz"),
            "--stages",
            "linf",
            "--linf-eps",
            "0.1",
            "--attacks",
            "fgsm",
        )
        == 0
    )
    assert json.loads((tmp_path / "out" / "results.json").read_text())["data"]["samples"] == 30


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--model", "missing.pt"], 1, "vulnscope: error: model file 'missing.pt' does not exist"),
        (
            ["--weights", "none.safetensors", "--model", "digits-mlp"],
            1,
            "vulnscope: error: weights file 'none.safetensors' does not exist",
        ),
        (["--data", "nowhere.npz"], 1, "vulnscope: error: npz file 'nowhere.npz' does not exist"),
        (
            ["--linf-eps", "-0.1"],
            2,
            "vulnscope audit: error: argument --linf-eps: expected finite budgets >= 0, got '-0.1'",
        ),
        (
            ["--l2-eps", "big"],
            2,
            "vulnscope audit: error: argument --l2-eps: expected comma-separated numbers",
        ),
        (
            ["--stages", "linf,l7"],
            2,
            "vulnscope audit: error: argument --stages: unknown stage 'l7'; choose a "
            "comma-separated list from linf, l2, certified, minimal, spectra, amplification, "
            "dangerous, beyond-lp, explain, detect, rg",
        ),
        (
            ["--stages", "linf,linf"],
            2,
            "vulnscope audit: error: argument --stages: a stage is listed twice in 'linf,linf'",
        ),
        (
            ["--stages", "rg"],
            1,
            "vulnscope: error: stages: 'rg' needs a deep RBM network (e.g. --model digits-rbm); "
            "this model is a DigitsCNN",
        ),
        (
            ["--device", "cuda:7"],
            1,
            "vulnscope: error: device: 'cuda:7' is not available",
        ),
        (
            ["--device", "toaster"],
            1,
            "vulnscope: error: device: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', "
            "got 'toaster'",
        ),
        (
            ["--seed", "-3"],
            2,
            "vulnscope audit: error: argument --seed: expected a number >= 0, got -3",
        ),
        (
            ["--attacks", "apgd-ce,nope"],
            2,
            "vulnscope audit: error: argument --attacks: unknown attack 'nope'; choose",
        ),
        (
            ["--attacks", "square,square"],
            2,
            "vulnscope audit: error: argument --attacks: an attack is listed twice",
        ),
        (
            ["--workers", "0"],
            2,
            "vulnscope audit: error: argument --workers: expected a number >= 1, got 0 (or 'auto')",
        ),
        (
            ["--workers", "many"],
            2,
            "vulnscope audit: error: argument --workers: expected a whole number, got 'many' "
            "(or 'auto')",
        ),
        (["--bogus"], 2, "vulnscope: error: unrecognized arguments: --bogus"),
        (["--model", "nomodule_abc:build"], 1, "vulnscope: error: cannot import 'nomodule_abc'"),
    ],
)
def test_bad_usage_is_one_line_and_a_nonzero_exit(
    tmp_path, capsys, monkeypatch, args, status, message, digits_cnn
):
    monkeypatch.chdir(tmp_path)
    assert main(["audit", *args]) == status
    err = capsys.readouterr().err.strip()
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "vulnscope-audit").exists()


def test_model_that_does_not_fit_the_data_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "wide.py").write_text(
        "import torch\ndef build():\n    return torch.nn.Linear(784, 10)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["audit", "--model", "wide:build"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vulnscope: error: the model cannot process inputs of shape (1, 8, 8)")
    assert len(err.splitlines()) == 1
    sys.modules.pop("wide", None)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "audit" in capsys.readouterr().err


def test_unwritable_output_is_one_line(tmp_path, capsys, digits_cnn):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert (
        main(
            [
                "audit",
                "--limit",
                "5",
                "--stages",
                "linf",
                "--linf-eps",
                "0.1",
                "--out",
                str(blocker / "sub"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("vulnscope: error:") and len(err.splitlines()) == 1


def test_console_script_runs_end_to_end(tmp_path, digits_cnn, isolated_cache):
    env = {**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache}
    script = os.path.join(os.path.dirname(sys.executable), "vulnscope")
    done = subprocess.run(
        [
            script,
            "audit",
            "--limit",
            "20",
            "--stages",
            "linf",
            "--linf-eps",
            "0.1",
            "--attacks",  # the entry point is under test, not the cascade
            "apgd-ce",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "results.json").is_file()
    failed = subprocess.run(
        [script, "audit", "--model", "nope.pt"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert (
        failed.returncode == 1
        and failed.stderr.count("\n") == 1
        and "Traceback" not in failed.stderr
    )
    version = subprocess.run(
        [sys.executable, "-m", "vulnscope", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert version.returncode == 0 and version.stdout.startswith("vulnscope ")


def test_an_audit_rerun_continues_refuses_other_options_by_name_and_fresh_starts_over(
    tmp_path, capsys, monkeypatch, digits_cnn
):
    from vulnscope._checkpoint import Checkpoints

    options = [
        "--limit",
        "12",
        "--stages",
        "linf",
        "--attacks",
        "fgsm",
        "--linf-eps",
        "0.1",
        "--batch-size",
        "4",
        "--workers",
        "1",
    ]
    # an audit whose pieces all finished but which stopped before writing its results
    monkeypatch.setattr(Checkpoints, "discard_directory", staticmethod(lambda directory: None))
    assert _audit(tmp_path, *options) == 0
    checkpoint = tmp_path / "out" / ".checkpoint"
    assert sorted(p.name for p in checkpoint.glob("linf-*.json")) == [
        "linf-00000.json",
        "linf-00001.json",
        "linf-00002.json",
    ]
    capsys.readouterr()
    # a piece whose file parses but holds no cascade chunk is refused by name, not merged
    finished = (checkpoint / "linf-00001.json").read_text()
    (checkpoint / "linf-00001.json").write_text('{"seconds": 1.0, "piece": {"norm": 3}}')
    assert _audit(tmp_path, *options) == 1
    err = capsys.readouterr().err
    assert "the checkpointed piece 'linf-00001' is damaged" in err and "--fresh" in err, err
    (checkpoint / "linf-00001.json").write_text(finished)
    assert _audit(tmp_path, *options) == 0  # the same options continue from the pieces
    capsys.readouterr()
    assert _audit(tmp_path, *options, "--attacks", "apgd-ce") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert 'other settings (attacks: ["fgsm"] there, ["apgd-ce"] now)' in err, err
    assert "--fresh to start over" in err
    assert _audit(tmp_path, *options, "--attacks", "apgd-ce", "--fresh") == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["settings"]["attacks"] == ["APGD-CE"]
    assert _audit(tmp_path, *options, "--resume", "--fresh") == 2
    assert "--resume and --fresh contradict each other" in capsys.readouterr().err
