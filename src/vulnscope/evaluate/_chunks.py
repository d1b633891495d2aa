"""The evaluations' one sharded loop: fixed chunks by index, each rank its share, all back.

``standard_evaluation_curve``, ``robust_accuracy`` and ``minimal_perturbations`` split
their points into fixed chunks (chunk ``k`` holds points ``[k B, (k + 1) B)``), compute a
typed piece per chunk, and merge the pieces. :func:`map_chunks` runs the chunks this rank
owns and hands every rank every piece, in chunk order: a merge that reads them in that
order gives the same result, to the last bit, whatever the number of ranks.

A piece crosses between ranks as bytes (no pickle): its :meth:`Piece.to_json` text, then
the raw bytes of its :meth:`Piece.tensors` (kept out of the JSON, exact to the bit).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from vulnscope.distributed import Sharding
from vulnscope.errors import InvalidArgumentError

__all__ = ["Piece", "map_chunks"]

_HEADER = 8
"""Bytes of the little-endian length of a piece's JSON header."""


class Piece(Protocol):
    """One chunk's result: JSON-ready fields and the tensors that travel beside them."""

    def to_json(self) -> dict[str, Any]:
        """The fields that are not :meth:`tensors`: ints, floats, strings, lists."""
        ...

    def tensors(self) -> tuple[Tensor, ...]:
        """The in-memory tensors (adversarial examples, say), exchanged as raw bytes."""
        ...


P = TypeVar("P", bound=Piece)


def map_chunks(
    count: int,
    compute: Callable[[int], P],
    *,
    decode: Callable[[dict[str, Any], tuple[Tensor, ...]], P],
    shard: bool,
    device: torch.device,
) -> list[P]:
    """``compute(k)`` for every chunk ``k < count``, shared among the ranks.

    Under ``torchrun`` (or any initialised ``torch.distributed`` group of several ranks)
    with ``shard``, this rank computes every ``world``-th chunk from its rank on and
    receives the others' pieces; otherwise it computes all of them.

    Args:
        count: the chunks.
        compute: the piece of one chunk, a deterministic function of the chunk's points
            and the seed (never of the rank).
        decode: ``(to_json(), tensors()) -> piece``: the inverse of the encoding.
        shard: share the chunks among the ranks of a process group.
        device: where the exchanged tensors land (this rank's GPU under NCCL).

    Returns:
        ``count`` pieces in chunk order, the same on every rank.

    Raises:
        PeerLostError: a rank stopped before the exchange.

    """
    sharding = Sharding(count, shard=shard, device=device)
    mine = {k: compute(k) for k in sharding.pieces}
    if sharding.world <= 1:
        return [mine[k] for k in range(count)]
    blobs = sharding.exchange({k: _encode(piece, device) for k, piece in mine.items()})
    return [mine[k] if k in mine else _decode(blob, decode) for k, blob in enumerate(blobs)]


def _encode(piece: Piece, device: torch.device) -> Tensor:
    """A piece as bytes (L,) uint8: header length, JSON header, each tensor's raw bytes."""
    tensors = piece.tensors()
    header = {
        "piece": piece.to_json(),
        "tensors": [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors],
    }
    text = json.dumps(header, allow_nan=False).encode()
    parts = [torch.tensor(list(len(text).to_bytes(_HEADER, "little")), dtype=torch.uint8)]
    parts.append(torch.frombuffer(bytearray(text), dtype=torch.uint8))
    parts += [t.detach().contiguous().view(torch.uint8).flatten().cpu() for t in tensors]
    return torch.cat(parts).to(device)


def _decode(blob: Tensor, decode: Callable[[dict[str, Any], tuple[Tensor, ...]], P]) -> P:
    host = blob.cpu()
    length = int.from_bytes(host[:_HEADER].numpy().tobytes(), "little")
    header = json.loads(host[_HEADER : _HEADER + length].numpy().tobytes())
    offset = _HEADER + length
    tensors = []
    for dtype_name, shape in header["tensors"]:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidArgumentError(f"a piece's tensor has an unknown dtype {dtype_name!r}")
        size = dtype.itemsize * int(torch.Size(shape).numel())
        # clone: a fresh buffer, aligned for the dtype's view
        tensors.append(blob[offset : offset + size].clone().view(dtype).reshape(shape))
        offset += size
    return decode(header["piece"], tuple(tensors))
