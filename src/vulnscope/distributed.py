"""Sharding a job over the ranks of a ``torch.distributed`` process group.

Two kinds of job are sharded. The evaluation functions (``standard_evaluation``,
``robust_accuracy``, ``minimal_perturbations``) split their fixed chunks of samples over
the ranks (:class:`Sharding`), each rank runs its own, and every rank receives every
chunk's piece (:meth:`Sharding.exchange`: two collective sums) and merges them in chunk
order; nothing is written to disk.

A long job (the audit) is a list of named *pieces* (a chunk of samples of one stage, or one
whole stage), each a deterministic function of the samples it covers and the seed: chunk
``k`` holds samples ``[k B, (k + 1) B)`` and draws from ``seed + k``, whichever rank runs
it. The ranks share the job's checkpoint directory; each piece is *claimed* by the first
rank to create its claim file there (``O_CREAT | O_EXCL``, atomic on local and network
file systems), computed by that rank alone and saved atomically. Rank 0 then reads every
piece and writes the one record, so the result is the same with 1, 2 or K ranks, and a
rerun with ``resume`` recomputes only the pieces no rank finished.

The process group comes from the environment that ``torchrun`` (or ``vulnscope audit
--workers K``) sets up: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; gloo
on CPU, NCCL on CUDA. A program that initialises its own process group is used as it is.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from vulnscope.errors import InvalidArgumentError, PeerLostError

__all__ = [
    "PeerLostError",
    "PieceClaims",
    "Sharding",
    "barrier",
    "check_local_gpus",
    "init_from_environment",
    "local_device",
    "rank_and_world",
    "shared_token",
]


def rank_and_world() -> tuple[int, int]:
    """The rank of this process and the number of ranks; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _environment_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(
            f"the environment variable {name} must be an integer, got {text!r}"
        ) from None


def init_from_environment(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Does nothing (False) when ``WORLD_SIZE`` is unset or 1, or when a process group is
    already initialised; otherwise initialises one (True): gloo on CPU; on CUDA, NCCL for
    CUDA tensors and gloo for CPU ones, each rank on ``cuda:LOCAL_RANK``.

    Raises:
        InvalidArgumentError: an incomplete torchrun environment, or ranks on this machine
            that would share a GPU (:func:`check_local_gpus`).

    """
    world = _environment_int("WORLD_SIZE")
    if world is None or world <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise InvalidArgumentError(
                f"WORLD_SIZE is {world} but {name} is not set: launch with torchrun "
                "(torchrun --nproc-per-node=K -m vulnscope audit ...) or vulnscope audit "
                "--workers K"
            )
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))  # one GPU per rank, as NCCL wants
        # NCCL for CUDA tensors, gloo for the CPU ones (a token; data kept on the host).
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")
    atexit.register(_leave_process_group)
    return True


_logger = logging.getLogger(__name__)

_peer_lost = False
"""Set once a collective found a rank gone: the group is then left to the exit."""


def _leave_process_group() -> None:
    """At exit: destroy the group this module created, as PyTorch asks of every rank.

    Without it NCCL warns at exit that resources may leak. Skipped after a lost peer,
    when a collective shutdown could wait for the rank that is gone.
    """
    if _peer_lost or not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(RuntimeError):  # the process is ending either way
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: a CUDA device without an index becomes ``cuda:LOCAL_RANK``.

    A device with an index is this rank's own choice (``cuda:{LOCAL_RANK}`` in a script,
    say) and is kept.

    Raises:
        InvalidArgumentError: ``cuda`` for more processes on this machine
            (``LOCAL_WORLD_SIZE``) than it has GPUs (:func:`check_local_gpus`).

    """
    if device.type != "cuda" or device.index is not None:
        return device
    local = _environment_int("LOCAL_RANK") or 0
    if (_environment_int("WORLD_SIZE") or 1) > 1:
        check_local_gpus(device, max(_environment_int("LOCAL_WORLD_SIZE") or 1, local + 1))
    return torch.device("cuda", local)


def check_local_gpus(device: torch.device, processes: int) -> None:
    """Check that ``processes`` ranks on this machine, all given ``device``, get a GPU each.

    NCCL joins one GPU per rank: two ranks on one GPU fail when the group starts. So
    ``cuda`` without an index (each rank takes ``cuda:LOCAL_RANK``) needs a GPU per
    process, and ``cuda:N`` given to every process would put them all on one.

    Raises:
        InvalidArgumentError: a CUDA ``device`` with an index, or too few GPUs, for
            ``processes`` > 1; nothing to check on other devices.

    """
    if device.type != "cuda" or processes <= 1:
        return
    if device.index is not None:
        raise InvalidArgumentError(
            f"device: {str(device)!r} puts all {processes} processes on this machine on one "
            "GPU, which NCCL does not allow: give 'cuda', and each process takes the GPU of "
            "its LOCAL_RANK"
        )
    count = torch.cuda.device_count()
    if count == 0:
        raise InvalidArgumentError("device: 'cuda' is not available: no CUDA device here")
    if processes > count:
        raise InvalidArgumentError(
            f"device: 'cuda' needs a GPU for each of the {processes} processes on this "
            f"machine, and it has {count}: start at most {count} (--workers or torchrun's "
            "--nproc-per-node)"
        )


def _lost_peer(error: RuntimeError, after: str) -> PeerLostError:
    """The error a rank raises when a collective finds a peer gone.

    The transport's own words (gloo's file and line, "Connection closed by peer") say
    nothing a user can act on: they go to the debug log, and the message says what
    happened and what to do.
    """
    global _peer_lost
    _peer_lost = True
    _logger.debug("the process group's transport: %s", str(error).strip())
    return PeerLostError(f"another worker stopped before this one finished{after}")


class Sharding:
    """A job of ``count`` pieces shared among the ranks, and the exchanges that rejoin it.

    With ``shard`` it first joins the process group ``torchrun`` describes (as
    :func:`init_from_environment`); this rank then runs every ``world``-th piece from its
    rank on (:attr:`pieces`). Without a group, or without ``shard`` (a caller that shares
    its own work out), there is one rank: every piece, and no exchange.

    Args:
        count: the job's pieces, numbered ``0 .. count - 1``.
        shard: whether to share them among the ranks.
        device: where the job's tensors live (NCCL needs them on this rank's GPU).

    """

    def __init__(self, count: int, *, shard: bool, device: torch.device) -> None:
        if shard:
            init_from_environment(device)
        self.rank, self.world = rank_and_world() if shard else (0, 1)
        self.count = count
        self.pieces = list(range(self.rank, count, self.world))
        self.device = device

    def exchange(self, mine: dict[int, Tensor]) -> list[Tensor]:
        """Every piece's bytes, in piece order, on every rank.

        Each rank gives the encoded result of each of its own :attr:`pieces`; every rank
        gets all ``count`` of them back bit for bit, whichever rank computed each (two
        collective sums: the lengths, then the bytes, each rank's at its own offsets and
        zeros elsewhere).

        Shape:
            mine: {piece: (L_piece,) uint8} for this rank's pieces; returns ``count``
            tensors (L_k,) uint8, on :attr:`device`.

        Raises:
            PeerLostError: a rank stopped before the exchange.

        """
        if sorted(mine) != self.pieces:
            raise InvalidArgumentError(
                f"mine must hold this rank's pieces {self.pieces}, got {sorted(mine)}"
            )
        if self.world <= 1:
            return [mine[k] for k in range(self.count)]
        lengths = torch.zeros(self.count, dtype=torch.int64, device=self.device)
        for k, data in mine.items():
            lengths[k] = data.numel()
        lengths = self.sum(lengths)
        ends = lengths.cumsum(0).tolist()
        starts = [0, *ends[:-1]]
        buffer = torch.zeros(ends[-1] if ends else 0, dtype=torch.uint8, device=self.device)
        for k, data in mine.items():
            buffer[starts[k] : ends[k]] = data.to(self.device)
        if buffer.numel():
            self._all_reduce(buffer)
        return [buffer[start:end] for start, end in zip(starts, ends, strict=True)]

    def gather_rows(self, tensor: Tensor, owned: Tensor) -> Tensor:
        """Every rank's own rows of ``tensor``, gathered into one tensor on every rank.

        Each rank holds the rows of its own pieces where ``owned`` is True (anything
        elsewhere); the result has every rank's rows, bit for bit (they travel as bytes,
        summed with zeros from the other ranks).

        Shape:
            tensor: (N, ...) of any dtype; owned: (N,) bool, disjoint across the ranks
            and covering all N rows together.

        Raises:
            PeerLostError: a rank stopped before the exchange.

        """
        if self.world <= 1:
            return tensor
        mask = owned.view(-1, *([1] * (tensor.dim() - 1)))
        zero = torch.zeros((), dtype=tensor.dtype, device=tensor.device)
        mine = torch.where(mask, tensor, zero)
        if tensor.dtype == torch.bool:
            mine = mine.to(torch.uint8)
        data = mine.contiguous().view(torch.uint8)
        self._all_reduce(data)
        whole = data.view(mine.dtype)
        return whole.bool() if tensor.dtype == torch.bool else whole

    def sum(self, values: Tensor) -> Tensor:
        """``values`` (counts of this rank's pieces) summed over the ranks.

        Raises:
            PeerLostError: a rank stopped before the exchange.

        """
        if self.world <= 1:
            return values
        total = values.clone()
        self._all_reduce(total)
        return total

    @staticmethod
    def _all_reduce(tensor: Tensor) -> None:
        sent = _for_the_group(tensor)
        try:
            dist.all_reduce(sent, op=dist.ReduceOp.SUM)
        except RuntimeError as error:  # gloo and NCCL report a lost peer as a RuntimeError
            raise _lost_peer(error, "") from None
        if sent is not tensor:
            tensor.copy_(sent)


def _for_the_group(tensor: Tensor) -> Tensor:
    """``tensor``, or a copy on this rank's GPU where the group is NCCL alone.

    A group the user initialised with ``backend="nccl"`` carries no CPU tensors.
    """
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group).

    Raises:
        PeerLostError: a rank stopped before reaching the barrier; the pieces finished so
            far are on disk, and a rerun with ``resume`` computes only the others.

    """
    if rank_and_world()[1] <= 1:
        return
    try:
        dist.barrier()
    except RuntimeError as error:  # gloo and NCCL report a lost peer as a RuntimeError
        raise _lost_peer(
            error, "; rerun with --resume to compute only the missing pieces"
        ) from None


def shared_token() -> str:
    """A random token drawn by rank 0 and sent to every rank: names one launch.

    Raises:
        PeerLostError: a rank stopped before the exchange.

    """
    value = torch.tensor([secrets.randbits(62)], dtype=torch.int64)
    if rank_and_world()[1] > 1:
        sent = _for_the_group(value)
        try:
            dist.broadcast(sent, src=0)
        except RuntimeError as error:  # gloo and NCCL report a lost peer as a RuntimeError
            raise _lost_peer(error, "") from None
        value.copy_(sent)
    return f"{int(value.item()):016x}"


class PieceClaims:
    """Which rank computes which piece: the first to create the piece's claim file.

    Args:
        directory: the claims of one launch (``shared_token`` names it), on a file system
            every rank sees.

    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def claim(self, name: str) -> bool:
        """True for exactly one of the ranks that ask for ``name`` in this launch."""
        try:
            handle = os.open(self.directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.close(handle)
        return True

    @staticmethod
    def discard_all(root: str | Path) -> None:
        """Remove the claims of every launch under ``root`` (a new launch starts afresh)."""
        shutil.rmtree(root, ignore_errors=True)
