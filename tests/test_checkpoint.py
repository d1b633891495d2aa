"""Checkpoints, and an audit that is interrupted and resumed."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vulnscope._checkpoint import CheckpointError, Checkpoints
from vulnscope.audit import audit, without_clock
from vulnscope.data import ImageData


def test_pieces_survive_a_resume_with_the_same_settings_only(tmp_path) -> None:
    store = Checkpoints(tmp_path / "c", {"seed": 1, "eps": [0.1]}, resume=False)
    assert store.load("a") is None and "a" not in store
    store.save("a", {"value": 3})
    again = Checkpoints(tmp_path / "c", {"seed": 1, "eps": [0.1]}, resume=True)
    assert again.load("a") == {"value": 3} and "a" in again and "b" not in again
    with pytest.raises(CheckpointError) as refused:
        Checkpoints(tmp_path / "c", {"seed": 2, "eps": [0.2], "new": 1}, resume=True)
    assert str(refused.value) == (
        f"the checkpoint in {tmp_path / 'c'} was made with other settings (eps: [0.1] there, "
        "[0.2] now; new: absent there, 1 now; seed: 1 there, 2 now); rerun with the same "
        "options, or with --fresh to start over"
    )
    fresh = Checkpoints(tmp_path / "c", {"seed": 2}, resume=False)  # without resume: discarded
    assert fresh.load("a") is None and "a" not in fresh
    (tmp_path / "c" / "b.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"b\.json: is damaged .*--fresh to start over"):
        fresh.load("b")
    Checkpoints.discard_directory(tmp_path / "c")
    assert not (tmp_path / "c").exists()


class _Interrupting(torch.nn.Module):
    """Forwards to the model, then raises KeyboardInterrupt at call ``stop``."""

    def __init__(self, model: torch.nn.Module, stop: int) -> None:
        super().__init__()
        self.model, self.stop, self.calls = model, stop, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.model(x)


def test_an_interrupted_audit_resumes_to_the_uninterrupted_result(
    digits_cnn, digits_test, tmp_path
):
    data = digits_test.take(20)  # two chunks per stage
    options = {
        "model_name": "cnn",
        "epsilons": {"linf": [0.05, 0.1]},
        "attacks": ["apgd-ce", "fgsm"],
        "batch_size": 10,
        "seed": 3,
        # chunked stages (linf, minimal), sample stages (spectra) and one that reads another
        # (dangerous reads linf); l2 would be linf again
        "stages": ["linf", "minimal", "spectra", "dangerous"],
        "geometry_samples": 8,
    }
    # the uninterrupted run also counts the model's calls in one run
    counting = _Interrupting(digits_cnn, stop=10**9)
    reference = audit(counting, data, out=tmp_path / "reference", **options).to_dict()
    per_run = counting.calls
    # stop part-way through: the first chunks are on disk, the rest is not
    interrupted = _Interrupting(digits_cnn, stop=per_run // 2)
    with pytest.raises(KeyboardInterrupt):
        audit(interrupted, data, out=tmp_path / "out", **options)
    finished = sorted(p.name for p in (tmp_path / "out" / ".checkpoint").iterdir())
    assert "linf-00000.json" in finished and "dangerous.json" not in finished, finished
    assert not (tmp_path / "out" / "results.json").exists()
    resumed_model = _Interrupting(digits_cnn, stop=10**9)
    resumed = audit(resumed_model, data, out=tmp_path / "out", resume=True, **options).to_dict()
    assert without_clock(resumed) == without_clock(reference)
    assert resumed_model.calls < per_run  # the finished chunks were not recomputed
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == json.loads(
        json.dumps(resumed)
    )
    for name in reference["figures"].values():  # the figures of resumed stages are there
        assert (tmp_path / "out" / name).is_file()
    # resuming again after success starts afresh: the checkpoint was removed
    assert not (tmp_path / "out" / ".checkpoint").exists()
    interrupted = _Interrupting(digits_cnn, stop=per_run // 2)
    with pytest.raises(KeyboardInterrupt):
        audit(interrupted, data, out=tmp_path / "ck", **options)
    with pytest.raises(CheckpointError, match="other settings"):
        audit(digits_cnn, data, out=tmp_path / "ck", resume=True, **{**options, "seed": 4})
    # same name, other weights or other data: the checkpoint is not theirs
    retrained = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        next(retrained.parameters()).add_(1e-3)
    digests = r"model_digest: \"[0-9a-f]+… there, \"[0-9a-f]+… now\)"
    with pytest.raises(CheckpointError, match=r"other settings \(" + digests):
        audit(retrained, data, out=tmp_path / "ck", resume=True, **options)
    other = ImageData(data.x.flip(0), data.y.flip(0), data.num_classes, data.source)
    with pytest.raises(CheckpointError, match=r"other settings \(data_digest: "):
        audit(digits_cnn, other, out=tmp_path / "ck", resume=True, **options)


def test_sigkill_at_random_moments_then_resume_gives_the_same_results(
    digits_cnn, isolated_cache, tmp_path, monkeypatch
):
    from vulnscope.cli import main

    audit_arguments = [
        "audit",
        "--limit",
        "20",
        "--batch-size",
        "10",
        "--attacks",
        "apgd-ce,fgsm",
        "--stages",
        "linf,minimal",  # chunked stages; a sample stage resumes in the in-process test above
        "--linf-eps",
        "0.05,0.1",
    ]
    command = [sys.executable, "-m", "vulnscope", *audit_arguments]
    env = {**os.environ, "VULNSCOPE_CACHE_DIR": isolated_cache, "OMP_NUM_THREADS": "1"}
    # The reference, in this process and one worker (the record does not depend on the
    # number): only the runs that are killed need processes of their own.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reference = tmp_path / "reference"
    assert main([*audit_arguments, "--workers", "1", "--out", str(reference)]) == 0
    out = tmp_path / "killed"
    first_chunk = out / ".checkpoint" / "linf-00000.json"
    for moment in ("after the first chunk", "during start-up"):
        process = subprocess.Popen(
            [*command, "--out", str(out), "--resume"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if moment == "after the first chunk":
            deadline = time.monotonic() + 120
            while not first_chunk.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / "results.json").exists(), moment
        json.loads(first_chunk.read_text())  # what is on disk is whole
    subprocess.run(
        [*command, "--out", str(out), "--resume"], env=env, check=True, capture_output=True
    )
    expected = json.loads((reference / "results.json").read_text())
    got = json.loads((out / "results.json").read_text())
    assert without_clock(got) == without_clock(expected)
    assert not (out / ".checkpoint").exists()  # removed once results.json is written
    assert (out / "report.html").read_text().count("data:image/png") == len(got["figures"])


def test_ctrl_c_during_an_audit_says_how_to_resume(monkeypatch, tmp_path, capsys, digits_cnn):  # type: ignore[no-untyped-def]
    import vulnscope.audit
    from vulnscope.cli import EXIT_INTERRUPTED, main

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(vulnscope.audit, "audit", interrupted)
    assert main(["audit", "--workers", "1", "--out", str(tmp_path / "out")]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "vulnscope: interrupted; rerun the same command to continue from the finished chunks"
    ]
