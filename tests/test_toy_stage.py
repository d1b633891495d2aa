"""The audit is a frame that stages plug into: a stage defined and registered in this file
alone runs, shards over two workers, resumes after a kill, and appears in ``results.json``
(schema-valid) and in the report, with no other file edited.

Run as a script (``python tests/test_toy_stage.py OUT``, under a torchrun environment) this
file is one worker of a sharded audit with the toy stage registered.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from typing_extensions import override

from vulnscope.audit import (
    AuditPlan,
    AuditResult,
    Piece,
    Report,
    ReportSection,
    Stage,
    StageVerdict,
    audit,
    register_stage,
    registered_stages,
    results_schema,
    unregister_stage,
    without_clock,
)
from vulnscope.data import load_digits


@dataclass(frozen=True)
class ToyPiece:
    """One chunk: its samples, those the model gets right, and its summed pixel values."""

    samples: int
    correct: int
    total: float


@dataclass(frozen=True)
class ToyResult:
    """The toy stage's section of the record."""

    samples: int
    correct: int
    mean_pixel: float


class ToyStage(Stage[ToyPiece, ToyResult]):
    """Counts, chunk by chunk, what the model classifies correctly."""

    name = "toy"
    description = "a toy stage from a test file"
    section = ("toy",)
    piece_type = ToyPiece
    result_type = ToyResult
    default = False  # runs only when named: other tests' audits stay as they are
    schema: Mapping[str, Any] = {
        "type": "object",
        "required": ["samples", "correct", "mean_pixel"],
        "additionalProperties": False,
        "properties": {
            "samples": {"type": "integer", "minimum": 0},
            "correct": {"type": "integer", "minimum": 0},
            "mean_pixel": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }

    @override
    def pieces(self, plan: AuditPlan) -> list[Piece]:
        return [
            Piece(f"toy-{k:05d}", k, start, stop) for k, (start, stop) in enumerate(plan.chunks)
        ]

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> ToyPiece:
        marks = Path(plan.extra["marks"])
        (marks / f"{piece.name}.{os.getpid()}").touch()  # which process computed it
        kill = marks / f"kill-at-{piece.name}"
        if kill.exists():  # a worker dies hard in the middle of the audit, once
            kill.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = plan.rows(piece.start, piece.stop)
        with torch.no_grad():
            correct = int((plan.model(x).argmax(1) == y).sum())
        return ToyPiece(int(x.shape[0]), correct, float(x.double().sum()))

    @override
    def merge(
        self, pieces: Sequence[ToyPiece], plan: AuditPlan, results: Mapping[str, Any]
    ) -> ToyResult:
        samples = sum(piece.samples for piece in pieces)
        pixels = samples * plan.data.x[0].numel()
        return ToyResult(
            samples, sum(p.correct for p in pieces), sum(p.total for p in pieces) / pixels
        )

    @override
    def verdict(self, result: ToyResult, clean_accuracy: float) -> StageVerdict:
        return StageVerdict(sentences=(f"The toy stage counted {result.samples} inputs.",))

    @override
    def key_figures(self, result: ToyResult, report: Report) -> list[tuple[str, str]]:
        return [("toy: correct", report.number(result.correct))]

    @override
    def report(self, result: ToyResult, report: Report) -> ReportSection:
        table = report.table(["samples", "correct"], [(result.samples, result.correct)])
        return ReportSection("Toy stage", table)


_SETTINGS = {
    "model_name": "toy-model",
    "stages": ["linf", "toy"],
    "batch_size": 10,
    "epsilons": {"linf": [0.1]},
    "attacks": ["fgsm"],
    "seed": 1,
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


def _audit(out: Path, marks: Path, **options: Any) -> AuditResult:
    return audit(
        _model(),
        load_digits("test").take(40),
        out=out,
        options={"marks": str(marks)},
        **_SETTINGS,
        **options,
    )


@pytest.fixture
def toy() -> Iterator[ToyStage]:
    stage = register_stage(ToyStage())
    yield stage  # type: ignore[misc]
    unregister_stage("toy")


def _workers(out: Path, marks: Path, resume: bool) -> list[subprocess.CompletedProcess[str]]:
    """This file as two ranks of one process group, auditing into ``out``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in torchrun}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, str(out), str(marks), "resume" if resume else "fresh"]
    ranks = [
        subprocess.Popen(
            command,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = []
    for rank in ranks:
        try:
            stdout, stderr = rank.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            rank.kill()
            stdout, stderr = rank.communicate()
        results.append(subprocess.CompletedProcess(command, rank.returncode, stdout, stderr))
    return results


def _computed(marks: Path) -> dict[str, set[str]]:
    """Which processes computed each toy piece."""
    found: dict[str, set[str]] = {}
    for mark in marks.glob("toy-*.*"):
        piece, pid = mark.name.rsplit(".", 1)
        found.setdefault(piece, set()).add(pid)
    return found


def test_a_stage_registered_here_runs_shards_resumes_and_is_reported(toy, tmp_path):
    assert "toy" in registered_stages() and list(registered_stages())[-1] == "toy"
    marks = tmp_path / "marks"
    marks.mkdir()
    # one process: the reference
    reference = _audit(tmp_path / "one", marks)
    toy_result = reference.results["toy"]
    assert toy_result.samples == 40
    assert toy_result.mean_pixel == pytest.approx(float(load_digits("test").take(40).x.mean()))
    assert toy_result.correct == round(reference.clean_accuracy * 40)
    record = json.loads((tmp_path / "one" / "results.json").read_text())
    import jsonschema

    jsonschema.validate(record, results_schema())
    assert record["toy"] == {
        "samples": 40,
        "correct": reference.results["toy"].correct,
        "mean_pixel": reference.results["toy"].mean_pixel,
    }
    broken = {**record, "toy": {**record["toy"], "mean_pixel": 2.0}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, results_schema())
    page = (tmp_path / "one" / "report.html").read_text()
    assert "<h2>Toy stage</h2>" in page and "<td>toy: correct</td>" in page
    assert "The toy stage counted 40 inputs." in page
    assert AuditResult.from_dict(record).results["toy"] == reference.results["toy"]

    # two workers, one of which is killed while it computes the third chunk
    for mark in marks.iterdir():
        mark.unlink()
    (marks / "kill-at-toy-00002").touch()
    out = tmp_path / "two"
    first = _workers(out, marks, resume=False)
    assert any(done.returncode != 0 for done in first), [d.stderr for d in first]
    assert not (out / "results.json").exists()
    before = _computed(marks)
    assert "toy-00002" in before
    stored = {p.stem for p in (out / ".checkpoint").glob("toy-*.json")}
    assert "toy-00002" not in stored
    # resumed with two workers: only the missing pieces are computed
    second = _workers(out, marks, resume=True)
    assert [done.returncode for done in second] == [0, 0], [d.stderr for d in second]
    after = _computed(marks)
    for piece in stored:
        assert after[piece] == before[piece], piece  # not computed again
    assert set(after) == {f"toy-{k:05d}" for k in range(4)}
    sharded = json.loads((out / "results.json").read_text())
    assert without_clock(sharded) == without_clock(record)
    assert sharded["timing"]["workers"] == 2
    assert "<h2>Toy stage</h2>" in (out / "report.html").read_text()


class _EntryPoint:
    """Stands for an installed package's entry point in ``vulnscope.audit_stages``."""

    def __init__(self, name: str, value: str, target: Any) -> None:
        self.name, self.value, self._target = name, value, target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_an_installed_package_s_stage_registers_through_its_entry_point(monkeypatch):
    import importlib.metadata

    from vulnscope.audit import stage as registry
    from vulnscope.errors import PluginError

    def points(target: Any) -> Any:
        return lambda group: (
            [_EntryPoint("toy", "toy_package:ToyStage", target)] * (group == registry.PLUGIN_GROUP)
        )

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", points(ToyStage))
    try:
        assert list(registered_stages())[-1] == "toy"
        assert isinstance(registered_stages()["toy"], ToyStage)
    finally:
        unregister_stage("toy")
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", points(ModuleNotFoundError("toy_x")))
    with pytest.raises(PluginError, match=r"'toy' \(toy_package:ToyStage\) .* toy_x"):
        registered_stages()


def test_a_stage_is_checked_when_it_registers(toy):
    from vulnscope.errors import InvalidArgumentError, InvalidTypeError

    with pytest.raises(InvalidArgumentError, match="stage 'toy' is registered already"):
        register_stage(ToyStage())
    with pytest.raises(InvalidTypeError, match="Stage instance, got the class ToyStage"):
        register_stage(ToyStage)  # type: ignore[arg-type]

    class Shouting(ToyStage):
        name = "Toy"

    with pytest.raises(
        InvalidArgumentError, match=r"lower-case identifier \(hyphens allowed\), got 'Toy'"
    ):
        register_stage(Shouting())

    class Reader(ToyStage):
        name = "reader"
        reads = ("later",)

    with pytest.raises(InvalidArgumentError, match="reads 'later', which is not registered"):
        register_stage(Reader())
    with pytest.raises(InvalidArgumentError, match="before: unknown stage 'nowhere'"):
        register_stage(Reader(), before="nowhere")
    assert "reader" not in registered_stages()


if __name__ == "__main__":  # one rank of a sharded audit (see _workers)
    register_stage(ToyStage())
    _audit(Path(sys.argv[1]), Path(sys.argv[2]), resume=sys.argv[3] == "resume")
