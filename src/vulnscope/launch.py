"""K worker processes on this machine, as ``torchrun --nproc-per-node=K`` would start them.

``vulnscope audit --workers K`` reruns its own command line in K processes that form a
gloo process group on the loopback interface (the environment torchrun sets: ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), each with its share of
the cores as intra-op threads, and watches them. Rank 0 keeps the terminal (progress
bars, the summary); the others print nothing unless they fail. When one stops with an
error, the others are stopped at once (on Linux they also die with this process), and
the finished pieces stay in the checkpoint for ``--resume``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from vulnscope._validation import check_int
from vulnscope.errors import WorkerFailedError

__all__ = [
    "WorkerFailedError",
    "auto_workers",
    "default_threads",
    "run_local_workers",
    "usable_cores",
]

_POLL_SECONDS = 0.1
_GRACE_SECONDS = 5.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: the usable cores shared out, at least one."""
    return max(usable_cores() // check_int(workers, "workers"), 1)


def _environment_threads() -> int | None:
    """``OMP_NUM_THREADS`` when it is set to a positive whole number, else None."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(given) if given.isdigit() and int(given) > 0 else None


def auto_workers(pieces: int, *, device: str | None = None) -> int:
    """``--workers auto``: how many worker processes suit this machine and this job.

    On the CPU, enough workers to fill the usable cores at ``OMP_NUM_THREADS`` threads
    each (one thread each when it is not set: processes share the cores better than
    threads do, since the attacks' many small operations are serial within a process),
    and at most one per piece of work. On an accelerator, one: several processes would
    share one device (run one per device under ``torchrun`` instead).

    Args:
        pieces: the pieces the workers share (:func:`vulnscope.audit.audit_pieces`), >= 1.
        device: the ``--device`` given (None: the CPU).

    """
    pieces = check_int(pieces, "pieces")
    if device is not None and not str(device).strip().lower().startswith("cpu"):
        return 1
    return max(min(usable_cores() // (_environment_threads() or 1), pieces), 1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL when this process dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker still running, then SIGKILL those that outlive the grace."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_local_workers(
    arguments: Sequence[str], workers: int, *, threads: int | None = None, resume_hint: str = ""
) -> int:
    """Run ``python -m vulnscope ARGUMENTS`` as ``workers`` ranks of one process group.

    Args:
        arguments: the command line after ``vulnscope``; each worker runs it with the
            torchrun environment set.
        workers: number of processes, >= 1.
        threads: intra-op threads per worker (``OMP_NUM_THREADS``); default: the
            environment's ``OMP_NUM_THREADS`` when set, else :func:`default_threads`.
        resume_hint: appended to the error when a worker fails.

    Returns:
        0 when every worker succeeded; rank 0's exit status when it failed with an error
        (which it printed on the terminal).

    Raises:
        WorkerFailedError: another worker failed, or rank 0 was killed; the message names
            it, how it stopped and its last line of error output.

    """
    workers = check_int(workers, "workers")
    if threads is None:
        threads = _environment_threads() or default_threads(workers)
    threads = check_int(threads, "threads")
    base = {
        **os.environ,
        "WORLD_SIZE": str(workers),
        "LOCAL_WORLD_SIZE": str(workers),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": str(threads),
    }
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="vulnscope-workers-") as logs:
        errors = [Path(logs) / f"rank{rank}.err" for rank in range(workers)]
        try:
            for rank in range(workers):
                env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                quiet = rank > 0
                with open(errors[rank], "wb") as stderr:
                    processes.append(subprocess.Popen(
                        [sys.executable, "-m", "vulnscope", *arguments], env=env,
                        stdout=subprocess.DEVNULL if quiet else None,
                        stderr=stderr if quiet else None, preexec_fn=preexec,
                    ))  # fmt: skip
            while True:
                codes = [process.poll() for process in processes]
                failed = [(rank, code) for rank, code in enumerate(codes) if code]
                if failed:
                    _stop(processes)
                    rank, code = failed[0]
                    if rank == 0 and code > 0:
                        return code  # its error is on the terminal already
                    cause = _last_line(errors[rank]).removeprefix("vulnscope: error: ")
                    raise WorkerFailedError(
                        f"worker {rank} of {workers} {_describe(code)}"
                        + (f": {cause}" if cause else "")
                        + (f"; {resume_hint}" if resume_hint else "")
                    )
                if all(code == 0 for code in codes):
                    return 0
                time.sleep(_POLL_SECONDS)
        except BaseException:
            _stop(processes)
            raise
