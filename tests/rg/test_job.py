import json

import pytest
import torch

from vulnscope.cli import main
from vulnscope.rbm.pretrained import binarized_digits, pretrained_deep_rbm


def test_rg_command_writes_the_record_and_figures(tmp_path, capsys):
    out = tmp_path / "rg"
    args = [
        "rg",
        "--depth",
        "3",
        "--width",
        "8",
        "--samples",
        "1500",
        "--limit",
        "3",
        "--depths",
        "2,3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "T^(2)" in printed and "depth 2:" in printed and "rg.json" in printed
    record = json.loads((out / "rg.json").read_text())
    assert record["schema_version"] == 1
    assert record["settings"]["depth"] == 3 and record["settings"]["depths"] == [2, 3]
    analysis = record["analysis"]
    assert analysis["depth"] == 3 and len(analysis["summary"]["layers"]) == 2
    assert len(analysis["per_input"]["labels"]) + analysis["summary"]["skipped_certain"] == 3
    assert [row["depth"] for row in record["depth_study"]["rows"]] == [2, 3]
    for name in record["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the depth-3 network of the main analysis is the cached one the depth study reused
    network = pretrained_deep_rbm(depth=3, width=8, seed=0)
    test = binarized_digits("test")
    accuracy = float((network.classify(test.x, chains=256).argmax(1) == test.y).float().mean())
    assert record["network"]["test_accuracy_sampled"] == pytest.approx(accuracy)
    assert record["depth_study"]["rows"][1]["test_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--depths", "1,2"], 2, "vulnscope rg: error: argument --depths"),
        (["--operators", "quads"], 2, "vulnscope rg: error: argument --operators"),
        (["--samples", "0"], 2, "vulnscope rg: error: argument --samples"),
        (["--depth", "1", "--depths", ""], 1, "vulnscope: error: depth must be an integer >= 2"),
    ],
)
def test_rg_bad_usage_is_one_line(tmp_path, capsys, args, status, message):
    assert main(["rg", "--out", str(tmp_path / "o"), *args]) == status
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(message), err
    assert not any("Traceback" in line for line in err)


def test_cached_network_reaches_the_accuracy_target_and_reloads(tmp_path):
    """Three hidden layers of 64: at least 92% with the sampled pass (the issue's target)."""
    network = pretrained_deep_rbm(depth=4, width=64, seed=0)
    test = binarized_digits("test")
    accuracy = (network.classify(test.x, chains=256, seed=1).argmax(1) == test.y).float().mean()
    assert float(accuracy) >= 0.92
    again = pretrained_deep_rbm(depth=4, width=64, seed=0)
    torch.testing.assert_close(again.rbms[0].weight, network.rbms[0].weight)


def test_an_interrupted_rg_run_resumes_its_depths_and_refuses_other_settings_by_name(
    tmp_path, capsys, monkeypatch
):
    from vulnscope.rg import job

    out = tmp_path / "rg"
    args = [
        "rg",
        "--depth",
        "2",
        "--width",
        "8",
        "--samples",
        "1500",
        "--limit",
        "2",
        "--depths",
        "2,3",
        "--out",
        str(out),
    ]

    def interrupted(*arguments, **options):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:  # stop once every depth is finished
        patched.setattr(job, "plot_depth_study", interrupted)
        assert main(args) == 130
    assert sorted(p.name for p in (out / ".checkpoint").iterdir()) == [
        "depth-2.json",
        "depth-3.json",
        "manifest.json",
    ]
    assert "rerun the same command to continue" in capsys.readouterr().err
    # other settings: refused in one line that names the setting and offers --fresh
    changed = [*args[:6], "1600", *args[7:]]
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "samples: 1500 there, 1600 now" in err and "--fresh" in err
    # the same settings: the finished depths are read back, not recomputed
    with monkeypatch.context() as patched:
        patched.setattr(job, "depth_study", interrupted)
        assert main(args) == 0
    assert [
        row["depth"] for row in json.loads((out / "rg.json").read_text())["depth_study"]["rows"]
    ] == [2, 3]
    assert not (out / ".checkpoint").exists()
    # --fresh starts over with the other settings, whatever the checkpoint holds
    with monkeypatch.context() as patched:
        patched.setattr(job, "plot_depth_study", interrupted)
        assert main(args) == 130
    assert main([*changed[:-3], "2", *changed[-2:], "--fresh"]) == 0
    record = json.loads((out / "rg.json").read_text())
    assert record["settings"]["samples"] == 1600 and record["settings"]["depths"] == [2]
