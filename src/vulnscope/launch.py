"""K worker processes on this machine, as ``torchrun --nproc-per-node=K`` would start them.

``vulnscope audit --workers K`` reruns its own command line in K processes that form a
gloo process group on the loopback interface (the environment torchrun sets: ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), each with its share of
the cores as intra-op threads, and watches them. Rank 0 keeps the terminal (progress
bars, the summary); the others print nothing unless they fail. When one stops with an
error, the others are stopped at once (on Linux they also die with this process), and
the finished pieces stay in the checkpoint for ``--resume``. The user reads one line: the
error of the worker that failed first. The others then fail too, since their peer is
gone; a worker started here says so by its exit status alone (:data:`LOST_PEER_STATUS`),
so neither their words nor the transport's reach the terminal.
"""

from __future__ import annotations

import ctypes
import os
import re
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
    "LAUNCHED",
    "LOST_PEER_STATUS",
    "WorkerFailedError",
    "auto_workers",
    "default_threads",
    "launched",
    "run_local_workers",
    "usable_cores",
    "worker_limit",
    "worker_threads",
]

LAUNCHED = "VULNSCOPE_LAUNCHED"
"""The environment variable :func:`run_local_workers` sets in every worker it starts."""

LOST_PEER_STATUS = 75
"""A started worker's exit status when it stopped only because another worker had gone.

``EX_TEMPFAIL`` of ``sysexits.h`` (a rerun may succeed): the launcher then reports the
worker that failed first, not this one.
"""

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


def worker_limit(pieces: int) -> int:
    """The most worker processes a job of ``pieces`` pieces can use.

    One per usable core and one per piece: a worker beyond either only waits for work, or
    slows the others down by sharing their cores.
    """
    return max(min(usable_cores(), check_int(pieces, "pieces")), 1)


def worker_threads(pieces: int) -> int:
    """Intra-op threads of each worker of a job of ``pieces`` pieces, for any number of them.

    A model's float32 results can depend on the number of threads (MKL's matrix products
    split their sums among the threads for small batches, so a value moves by an ulp), so
    the threads must not follow the number of workers for the record to be the same with
    1 or K: ``OMP_NUM_THREADS`` when it is set, else the usable cores shared among as many
    workers as :func:`auto_workers` starts on the CPU. Fewer workers than that leave cores
    idle rather than change the result.
    """
    return _environment_threads() or max(usable_cores() // worker_limit(pieces), 1)


def launched() -> bool:
    """Whether this process is a worker that :func:`run_local_workers` started."""
    return os.environ.get(LAUNCHED) == "1"


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
    if code == LOST_PEER_STATUS:
        return "lost its connection to the other workers"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")
"""What torch.distributed puts before each line of a rank's traceback."""

_ERROR_PREFIX = "vulnscope: error: "


def _cause(path: Path) -> str:
    """A worker's own one-line error, from its stderr in ``path``.

    Its last ``vulnscope: error:`` line, else its last line (a traceback ends with the
    exception's type and message), without those prefixes or torch's ``[rankN]:``.
    """
    try:
        text = path.read_text("utf-8", "replace")
    except OSError:
        return ""
    lines = [_RANK_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith(_ERROR_PREFIX)]
    return (errors or lines or [""])[-1].removeprefix(_ERROR_PREFIX)


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
        0 when every worker succeeded; rank 0's exit status when it failed first with an
        error (which it printed on the terminal).

    Raises:
        WorkerFailedError: another worker failed first, or rank 0 was killed; the message
            names it, how it stopped and its own one-line error. Workers that stopped only
            because a peer had gone (:data:`LOST_PEER_STATUS`) are named only when no
            other failure shows within a few seconds.

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
        LAUNCHED: "1",
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
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "vulnscope", *arguments],
                            env=env,
                            stdout=subprocess.DEVNULL if quiet else None,
                            stderr=stderr if quiet else None,
                            preexec_fn=preexec,
                        )
                    )
            lost_since: float | None = None
            while True:
                codes = [process.poll() for process in processes]
                if all(code == 0 for code in codes):
                    return 0
                failed = [(rank, code) for rank, code in enumerate(codes) if code]
                first = [(rank, code) for rank, code in failed if code != LOST_PEER_STATUS]
                if failed and lost_since is None:
                    lost_since = time.monotonic()
                waited = 0.0 if lost_since is None else time.monotonic() - lost_since
                # A peer is lost because another worker stopped: wait a little for that one.
                if first or (failed and waited > _GRACE_SECONDS):
                    _stop(processes)
                    rank, code = (first or failed)[0]
                    if rank == 0 and code > 0 and code != LOST_PEER_STATUS:
                        return code  # its error is on the terminal already
                    cause = _cause(errors[rank]) if code != LOST_PEER_STATUS else ""
                    raise WorkerFailedError(
                        f"worker {rank} of {workers} {_describe(code)}"
                        + (f": {cause}" if cause else "")
                        + (f"; {resume_hint}" if resume_hint else "")
                    )
                time.sleep(_POLL_SECONDS)
        except BaseException:
            _stop(processes)
            raise
