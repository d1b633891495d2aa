"""Sharded audits and evaluations: claims, the process group from the environment, and K
workers agreeing with one process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from vulnscope import launch
from vulnscope.audit import audit, pipeline, without_clock
from vulnscope.cli import main
from vulnscope.data import ImageData
from vulnscope.distributed import (
    PieceClaims,
    Sharding,
    barrier,
    check_local_gpus,
    init_from_environment,
    local_device,
    rank_and_world,
    shared_token,
)
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate import standard_evaluation
from vulnscope.launch import auto_workers, default_threads, run_local_workers

_AUDIT = [
    "audit",
    "--limit",
    "36",
    "--batch-size",
    "9",
    "--attacks",
    "apgd-ce,fgsm",
    "--stages",
    "linf,spectra",
    "--linf-eps",
    "0.05,0.1",
]
"""A small audit of five pieces, enough for three workers: four chunks of the L∞ curve and
the spectra's one piece on the geometry sample (the minimal perturbations' chunks meet
two workers in test_worker_count_identity.py)."""


def _environment(cache: str) -> dict[str, str]:
    torchrun = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in torchrun}
    return {**env, "VULNSCOPE_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}


def _vulnscope(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vulnscope", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _record(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reference(isolated_cache, run_directory) -> dict:  # type: ignore[type-arg]
    """The small audit's record from one process (computed once per run, whichever xdist
    worker needs it first)."""
    out = run_directory / "distributed-reference"
    with FileLock(f"{out}.lock"):
        if not (out / "results.json").is_file():
            done = _vulnscope(
                [*_AUDIT, "--workers", "1", "--out", str(out)], _environment(isolated_cache)
            )
            assert done.returncode == 0, done.stderr
    return _record(out)


def test_each_piece_is_claimed_by_exactly_one_claimant(tmp_path):
    names = [f"linf-{index:05d}" for index in range(200)]
    claimants = [PieceClaims(tmp_path / "claims") for _ in range(4)]

    def claim_all(claims: PieceClaims) -> list[str]:
        return [name for name in names if claims.claim(name)]

    with ThreadPoolExecutor(4) as pool:
        won = list(pool.map(claim_all, claimants))
    assert sorted(name for names_won in won for name in names_won) == sorted(names)
    assert not PieceClaims(tmp_path / "claims").claim(names[0])  # taken for this launch
    PieceClaims.discard_all(tmp_path / "claims")
    assert PieceClaims(tmp_path / "claims").claim(names[0])  # a new launch starts afresh


def test_outside_a_process_group_one_rank_and_no_waiting():
    assert rank_and_world() == (0, 1)
    barrier()
    token = shared_token()
    assert len(token) == 16 and int(token, 16) >= 0 and shared_token() != token


def test_environment_without_a_world_is_left_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_environment(torch.device("cpu")) is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_environment(torch.device("cpu")) is False


def test_an_incomplete_torchrun_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(InvalidArgumentError, match="WORLD_SIZE is 2 but RANK is not set"):
        init_from_environment(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InvalidArgumentError, match="WORLD_SIZE must be an integer, got 'two'"):
        init_from_environment(torch.device("cpu"))


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(
    ("device", "local_rank", "local_world", "expected"),
    [
        ("cuda", "0", "2", "cuda:0"),
        ("cuda", "1", "2", "cuda:1"),
        ("cuda", "1", None, "cuda:1"),  # no LOCAL_WORLD_SIZE: at least LOCAL_RANK + 1
        ("cuda:1", "0", "1", "cuda:1"),  # one process per machine: the GPU named
        ("cuda:0", "1", "2", "cuda:0"),  # a rank's own choice (a script's cuda:{rank}) is kept
        ("cpu", "3", "4", "cpu"),
    ],
)
def test_each_rank_runs_on_the_gpu_of_its_local_rank(
    monkeypatch, device, local_rank, local_world, expected
):
    _pretend_gpus(monkeypatch, 2)
    monkeypatch.setenv("WORLD_SIZE", "4")  # two machines of two
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert local_device(torch.device(device)) == torch.device(expected)


def test_ranks_that_would_share_a_gpu_are_refused_before_nccl_starts(monkeypatch):
    _pretend_gpus(monkeypatch, 2)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(
        InvalidArgumentError,
        match=r"a GPU for each of the 3 processes on this "
        r"machine, and it has 2: start at most 2",
    ):
        local_device(torch.device("cuda"))
    # the same cuda:N for every process (one --device for all): one GPU for two
    with pytest.raises(
        InvalidArgumentError,
        match=r"'cuda:0' puts all 2 processes on this "
        r"machine on one GPU",
    ):
        check_local_gpus(torch.device("cuda:0"), 2)
    check_local_gpus(torch.device("cuda"), 2)  # one each: fine
    check_local_gpus(torch.device("cuda:1"), 1)
    check_local_gpus(torch.device("cpu"), 64)
    _pretend_gpus(monkeypatch, 0)
    with pytest.raises(InvalidArgumentError, match="'cuda' is not available: no CUDA device"):
        check_local_gpus(torch.device("cuda"), 2)


def test_on_cuda_each_rank_binds_its_gpu_then_joins_nccl_with_gloo_for_the_host(monkeypatch):
    """The wiring of the GPU path, which this CPU-only machine cannot run: the GPU is set
    before the group starts, CUDA tensors go over NCCL and the host's over gloo."""
    _pretend_gpus(monkeypatch, 4)
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda **options: calls.append(options)
    )
    monkeypatch.setattr("atexit.register", lambda function: calls.append(function.__name__))
    for name, value in {
        "WORLD_SIZE": "8",
        "RANK": "6",
        "LOCAL_RANK": "2",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "host",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(name, value)
    assert init_from_environment(torch.device("cuda")) is True
    assert calls == [
        torch.device("cuda", 2),
        {"backend": "cpu:gloo,cuda:nccl"},
        "_leave_process_group",
    ]


def test_the_cli_refuses_more_gpu_workers_than_gpus_before_starting_any(
    monkeypatch, tmp_path, capsys, digits_cnn
):
    _pretend_gpus(monkeypatch, 1)
    monkeypatch.setattr(launch, "run_local_workers", lambda *_, **__: pytest.fail("started"))
    two_pieces = ["--limit", "20", "--batch-size", "10", "--stages", "linf"]
    base = ["audit", *two_pieces, "--out", str(tmp_path / "out")]
    assert main([*base, "--device", "cuda", "--workers", "2"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "needs a GPU for each of the 2 processes" in error
    assert main([*base, "--device", "cuda:9", "--workers", "2"]) == 1
    assert "'cuda:9' is not available: this machine has 1 CUDA device(s)" in capsys.readouterr().err
    # under torchrun: every local rank got the same --device, so cuda:N would be shared
    _pretend_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **_: pytest.fail("joined"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main([*base, "--device", "cuda:0"]) == 1
    assert "'cuda:0' puts all 2 processes on this machine on one GPU" in capsys.readouterr().err


_JOIN_AND_EXIT = """
import atexit, sys, torch, torch.distributed as dist
from vulnscope import distributed
assert distributed.init_from_environment(torch.device("cpu"))
distributed.barrier()
distributed._peer_lost = sys.argv[1] == "lost"
atexit._run_exitfuncs()
print(dist.is_initialized())
"""


@pytest.mark.parametrize(("peer", "left"), [("fine", True), ("lost", False)])
def test_a_group_vulnscope_joined_is_destroyed_at_exit_unless_a_peer_was_lost(tmp_path, peer, left):
    """PyTorch asks every rank to destroy its group before exit (NCCL warns otherwise);
    after a lost peer a collective shutdown could wait for the rank that is gone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **_environment(str(tmp_path)),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _JOIN_AND_EXIT, peer],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(not left)] * 2


def test_a_sharded_audit_needs_a_shared_directory(monkeypatch, digits_cnn):
    monkeypatch.setattr(pipeline, "rank_and_world", lambda: (0, 2))
    data = ImageData(torch.rand(4, 1, 8, 8), torch.arange(4), source="random", num_classes=10)
    with pytest.raises(InvalidArgumentError, match=r"out: a sharded audit \(2 ranks\) needs"):
        audit(digits_cnn, data, model_name="cnn", stages=["linf"], out=None)


class _OtherRankTakesTheL2Chunks:
    """Claims as a second rank would that took every L2 chunk (and never finishes)."""

    def __init__(self, directory: Path) -> None:
        pass

    def claim(self, name: str) -> bool:
        return not name.startswith("l2-")

    @staticmethod
    def discard_all(root: Path) -> None:
        pass


def test_rank_zero_names_the_pieces_it_waits_for(monkeypatch, tmp_path, caplog, digits_cnn):
    """Its bars count the other ranks' pieces done, so the wait that follows is explained.
    (Alone past a barrier that does not wait, it then computes the missing pieces itself.)"""
    monkeypatch.setattr(pipeline, "rank_and_world", lambda: (0, 2))
    monkeypatch.setattr(pipeline, "barrier", lambda: None)  # alone: nobody to wait for
    monkeypatch.setattr(pipeline, "PieceClaims", _OtherRankTakesTheL2Chunks)
    data = ImageData(
        torch.rand(30, 1, 8, 8), torch.arange(30) % 10, source="random", num_classes=10
    )
    with caplog.at_level(logging.INFO, logger="vulnscope"):
        audit(
            digits_cnn,
            data,
            model_name="cnn",
            stages=["linf", "l2"],
            attacks=["fgsm"],
            batch_size=6,
            out=tmp_path / "out",
        )
    waiting = [record.getMessage() for record in caplog.records if "waiting" in record.getMessage()]
    assert waiting == [
        "waiting for the other workers: 5 pieces left (l2-00000, l2-00001, l2-00002, l2-00003, ...)"
    ]


def test_threads_share_out_the_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads(1) == cores
    assert default_threads(10_000) == 1
    with pytest.raises(InvalidArgumentError, match="workers"):
        run_local_workers(["audit"], 0)


@pytest.mark.parametrize(
    ("cores", "threads", "device", "pieces", "workers"),
    [
        (2, None, None, 6, 2),  # the default audit on this machine: one per core
        (16, None, "cpu", 6, 6),  # no more workers than pieces
        (16, "4", None, 30, 4),  # OMP_NUM_THREADS threads each
        (2, "2", None, 6, 1),  # the threads already fill the cores
        (2, "8", None, 6, 1),
        (2, "zero", None, 6, 2),  # not a number of threads: one each
        (8, None, "cuda", 6, 1),  # one process per GPU is torchrun's job
        (8, None, "cuda:1", 6, 1),
        (1, None, None, 6, 1),
    ],
)
def test_auto_workers_fill_the_cores_at_most_one_per_piece(
    monkeypatch, cores, threads, device, pieces, workers
):
    monkeypatch.setattr(launch, "usable_cores", lambda: cores)
    if threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
    assert auto_workers(pieces, device=device) == workers


@pytest.mark.parametrize(
    ("cores", "threads", "pieces", "limit", "each"),
    [
        (2, None, 1, 1, 2),
        (2, None, 13, 2, 1),
        (16, None, 4, 4, 4),
        (16, "2", 4, 4, 2),
        (1, None, 5, 1, 1),
    ],
)
def test_workers_are_capped_by_cores_and_pieces_and_their_threads_by_neither_count(
    monkeypatch, cores, threads, pieces, limit, each
):
    """Each worker gets the threads ``auto`` would give it, whatever ``--workers`` says, so
    the record does not follow the number of workers; ``limit`` workers fit the cores."""
    monkeypatch.setattr(launch, "usable_cores", lambda: cores)
    if threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
    assert launch.worker_limit(pieces) == limit
    assert launch.worker_threads(pieces) == each
    if threads is None:
        assert limit * each <= cores


def test_the_cli_shares_an_audit_among_auto_workers_by_default(monkeypatch, tmp_path, digits_cnn):
    launched = []
    monkeypatch.setattr(launch, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(
        launch, "run_local_workers", lambda arguments, workers, **_: launched.append(workers) or 0
    )
    base = ["audit", "--limit", "20", "--out", str(tmp_path / "out")]
    assert main([*base, "--stages", "linf,minimal"]) == 0  # two pieces
    assert main([*base, "--workers", "3", "--stages", "linf", "--batch-size", "5"]) == 0  # as asked
    assert launched == [2, 3]
    # one piece: nothing to share, so this process runs it
    assert main([*base, "--stages", "linf", "--attacks", "fgsm"]) == 0
    assert launched == [2, 3]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["timing"]["workers"] == 1


def test_more_workers_than_the_cores_and_pieces_allow_are_capped_in_one_line(
    monkeypatch, tmp_path, capsys, digits_cnn
):
    """``--workers 99`` on 2 cores: as many workers as there are pieces and cores, said in
    one line, instead of 99 processes that wait or share the cores."""
    launched = []
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(
        launch, "run_local_workers", lambda arguments, workers, **_: launched.append(workers) or 0
    )
    base = ["audit", "--limit", "20", "--out", str(tmp_path / "out")]
    assert main([*base, "--stages", "linf", "--batch-size", "5", "--workers", "5"]) == 0
    assert launched == [2]  # four pieces, two cores
    assert capsys.readouterr().err.splitlines() == [
        "vulnscope: --workers 5 capped to 2 (4 pieces of work, 2 usable cores)"
    ]
    # the command: one piece, so this process runs it alone
    assert main([*base, "--quick", "--stages", "linf", "--attacks", "fgsm", "--workers", "99"]) == 0
    assert launched == [2]
    assert "vulnscope: --workers 99 capped to 1 (1 piece of work, 2 usable cores)" in (
        capsys.readouterr().err.splitlines()
    )
    assert json.loads((tmp_path / "out" / "results.json").read_text())["timing"]["workers"] == 1


def test_two_and_three_workers_give_the_single_process_record(isolated_cache, tmp_path, reference):
    env = _environment(isolated_cache)
    # three workers only where there are three cores: fewer would run (and test) two
    for workers in sorted({2, min(3, launch.usable_cores())}):
        out = tmp_path / f"workers-{workers}"
        done = _vulnscope([*_AUDIT, "--workers", str(workers), "--out", str(out)], env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("wrote ") == 1  # one summary, from rank 0
        got = _record(out)
        assert not (out / ".checkpoint").exists()
        ran = min(workers, launch.usable_cores())  # no more workers than cores
        assert got["timing"]["workers"] == ran and reference["timing"]["workers"] == 1
        assert without_clock(got) == without_clock(reference)


def test_torchrun_ranks_give_the_single_process_record(isolated_cache, tmp_path, reference):
    sharded = tmp_path / "torchrun"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "vulnscope",
            *_AUDIT,
            "--out",
            str(sharded),
        ],
        env=_environment(isolated_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = _record(sharded)
    assert got["timing"]["workers"] == 2
    assert without_clock(got) == without_clock(reference)


_JOB = Path(__file__).with_name("sharded_evaluation_job.py")


def _job_results(out: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:  # type: ignore[type-arg]
    record = json.loads((out / f"rank-{rank}.json").read_text())
    return record, load_file(out / f"rank-{rank}.safetensors")


@pytest.fixture(scope="module")
def job_alone(isolated_cache, run_directory) -> Path:
    """The evaluation script's results from one plain process (computed once per run)."""
    out = run_directory / "distributed-job-alone"
    with FileLock(f"{out}.lock"):
        if not (out / "done").is_file():
            done = subprocess.run(
                [sys.executable, str(_JOB), str(out)],
                env=_environment(isolated_cache),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            (out / "done").touch()
    return out


def test_evaluation_functions_under_torchrun_equal_one_process(isolated_cache, tmp_path, job_alone):
    """standard_evaluation_curve, robust_accuracy and minimal_perturbations, unchanged in
    a user's script: every rank returns what one process does, field by field (three ranks
    share six chunks; the two-node test below has two ranks)."""
    ranks, out = 3, tmp_path / "ranks"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(ranks),
            str(_JOB),
            str(out),
        ],
        env=_environment(isolated_cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_every_rank_equals_one_process(out, ranks, job_alone)


def _assert_every_rank_equals_one_process(out: Path, ranks: int, alone_out: Path) -> None:
    alone, alone_tensors = _job_results(alone_out, 0)
    assert alone.pop("world") == 1
    everything = alone.pop("forwarded")
    for rank in range(ranks):
        record, tensors = _job_results(out, rank)
        assert record.pop("world") == ranks
        assert record.pop("forwarded") < everything * 0.75  # the rank did its share only
        assert record == alone
        assert tensors.keys() == alone_tensors.keys()
        for name, tensor in tensors.items():
            assert torch.equal(tensor, alone_tensors[name]), (rank, name)
        assert all(record["exact"].values()), record["exact"]  # rows arrive bit for bit


def test_two_nodes_meet_through_torchrun_s_rendezvous(isolated_cache, tmp_path, job_alone):
    """The README's multi-node command (c10d rendezvous), both nodes on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "nodes"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "vulnscope-test",
        str(_JOB),
        str(out),
    ]
    logs = [tmp_path / f"node-{node}.log" for node in range(2)]
    nodes = []
    for log in logs:
        with log.open("w") as stream:  # the child keeps its own handle
            nodes.append(
                subprocess.Popen(
                    command,
                    env=_environment(isolated_cache),
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                )
            )
    codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    _assert_every_rank_equals_one_process(out, 2, job_alone)


def test_without_a_group_or_without_shard_every_piece_is_here():
    x = torch.arange(12.0).view(6, 2)
    owned = torch.tensor([True, False] * 3)
    for shard in (True, False):
        sharding = Sharding(5, shard=shard, device=x.device)
        assert (sharding.rank, sharding.world, sharding.pieces) == (0, 1, [0, 1, 2, 3, 4])
        assert sharding.gather_rows(x, owned) is x
        assert torch.equal(sharding.sum(torch.tensor([3, 4])), torch.tensor([3, 4]))


def test_chunks_are_fixed_by_index_so_the_batch_size_alone_sets_the_result():
    """A chunk's result depends on its points and the seed only: evaluating a chunk on
    its own gives exactly its rows of the whole evaluation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(10, 1, 4, 4)
    y = model(x).argmax(1)
    whole = standard_evaluation(model, x, y, eps=0.05, attacks=["apgd-ce", "square"], batch_size=4)
    middle = standard_evaluation(model, x[4:8], y[4:8], eps=0.05, attacks=["apgd-ce", "square"])
    assert torch.equal(whole.x_adv[4:8], middle.x_adv)
    assert whole.broken_by[4:8] == middle.broken_by


def _worker_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of the workers a launcher started (Linux /proc)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    ranks = {}
    for child in children:
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        for entry in environ:
            if entry.startswith(b"RANK="):
                ranks[int(entry[5:])] = int(child)
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_worker_stops_the_run_and_resume_completes_it(isolated_cache, tmp_path, reference):
    env, out = _environment(isolated_cache), tmp_path / "killed"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "vulnscope", *_AUDIT, "--workers", "2", "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list((out / ".checkpoint").glob("linf-*.json")):
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.01)
    os.kill(_worker_pids(launcher.pid)[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    # rank 0 may say first that a peer is gone; the launcher's line names which one
    assert stderr.strip().splitlines()[-1] == (
        "vulnscope: error: worker 1 of 2 was killed by SIGKILL; rerun the same command to "
        "continue from the finished chunks"
    ), stderr
    assert "Traceback" not in stderr
    assert not (out / "results.json").exists()
    finished = sorted(path.name for path in (out / ".checkpoint").glob("*-0000*.json"))
    assert finished  # the pieces done before the kill are kept
    # any number of workers may resume: the pieces do not depend on who computed them
    resumed = _vulnscope([*_AUDIT, "--workers", "3", "--out", str(out), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert without_clock(_record(out)) == without_clock(reference)


_FACTORY = """
import os
import signal

import torch


def build():
    if os.environ.get("RANK") == "{rank}":
        {action}
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
"""


@pytest.mark.parametrize(
    ("rank", "action", "expected"),
    [
        ("0", "os.kill(os.getpid(), signal.SIGKILL)", "worker 0 of 2 was killed by SIGKILL"),
        (
            "1",
            "raise SystemExit('vulnscope: error: rank one cannot start')",
            "worker 1 of 2 exited with status 1: rank one cannot start",
        ),
    ],
)
def test_the_launcher_names_the_worker_that_failed(
    tmp_path, isolated_cache, rank, action, expected
):
    (tmp_path / "factory.py").write_text(_FACTORY.format(rank=rank, action=action))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vulnscope",
            "audit",
            "--model",
            "factory:build",
            "--limit",
            "4",
            "--batch-size",
            "2",
            "--stages",
            "linf",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
        env=_environment(isolated_cache),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert errors[-1] == (
        f"vulnscope: error: {expected}; rerun the same command to continue from the finished chunks"
    ), done.stderr
    assert "Traceback" not in done.stderr


_FAILS_IN_RANK_ONE = """
import os

import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.calls = 0

    def forward(self, x):
        self.calls += 1  # past the launcher's checks: the process group has formed
        if os.environ.get("RANK") == "1" and self.calls > 3:
            raise ValueError("rank one's model broke")
        return self.net(x)


def build():
    return Model()
"""


@pytest.mark.skipif(launch.usable_cores() < 2, reason="two workers need two cores")
def test_a_worker_s_failure_is_its_own_line_alone_without_the_transport_s_words(
    tmp_path, isolated_cache
):
    """Worker 1's model raises while worker 0 waits for it in a collective: the user reads
    worker 1's error, not worker 0's lost connection nor gloo's message about it."""
    (tmp_path / "factory.py").write_text(_FAILS_IN_RANK_ONE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vulnscope",
            "audit",
            "--model",
            "factory:build",
            "--limit",
            "8",
            "--batch-size",
            "4",
            "--stages",
            "linf",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
        env=_environment(isolated_cache),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        "vulnscope: error: worker 1 of 2 exited with status 1: ValueError: rank one's model "
        "broke; rerun the same command to continue from the finished chunks"
    ], done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]
    for transport in ("gloo", "pair.cc", "Connection", "GLHF", "another worker", "Traceback"):
        assert transport not in done.stderr, done.stderr
