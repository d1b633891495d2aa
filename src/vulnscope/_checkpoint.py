"""Checkpoints of a long job: one atomically written JSON file per finished piece.

A job that is killed (Ctrl-C, SIGKILL, a lost machine) leaves every finished piece on
disk and never half a file; rerun with ``resume=True`` it skips them. A manifest holds
the job's settings, and a checkpoint made with other settings is refused rather than
mixed into the result, or silently recomputed: the refusal names each setting that
differs, with the value stored and the value given, and says how to start over
(:data:`FRESH_FLAG` on the command line, ``resume=False`` in Python). Every job that
keeps finished work follows this one rule: the audit's chunks and stages, ``rg``'s
depths, ``clone``'s cells, and the model file ``defend`` would replace
(:func:`check_same_settings`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vulnscope._io import write_json_atomic
from vulnscope.errors import CheckpointError

__all__ = [
    "FRESH_FLAG",
    "CheckpointError",
    "Checkpoints",
    "check_same_settings",
    "describe_changes",
    "tensor_digest",
]

FRESH_FLAG = "--fresh"
"""The command-line flag of every subcommand that discards a checkpoint and starts over."""

_START_OVER = f"rerun with the same options, or with {FRESH_FLAG} to start over"
_SHOWN_CHARACTERS = 24
"""Longer stored values (digests, long lists) are shortened in the refusal's one line."""


def tensor_digest(tensors: Sequence[Tensor]) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes: the identity of a model or data set."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= _SHOWN_CHARACTERS else text[: _SHOWN_CHARACTERS - 1] + "…"


def describe_changes(stored: dict[str, Any], given: dict[str, Any]) -> str:
    """Each setting that differs, as ``name: stored there, given now``, joined by ``; ``.

    A setting present on one side only shows as ``absent`` on the other.
    """
    changed = sorted(key for key in set(stored) | set(given) if stored.get(key) != given.get(key))
    return "; ".join(
        f"{key}: {_shown(stored[key]) if key in stored else 'absent'} there, "
        f"{_shown(given[key]) if key in given else 'absent'} now"
        for key in changed
    )


def check_same_settings(what: str, stored: dict[str, Any], given: dict[str, Any]) -> None:
    """Refuse to continue ``what`` (finished work made with ``stored``) with other settings.

    Raises:
        CheckpointError: when the settings (as JSON reads them back) differ, in one line
            naming each one, with its stored and given value, and :data:`FRESH_FLAG`.

    """
    given = json.loads(json.dumps(given))
    if stored != given:
        raise CheckpointError(
            f"{what} was made with other settings ({describe_changes(stored, given)}); "
            f"{_START_OVER}"
        )


class Checkpoints:
    """The finished pieces of one job in a directory.

    Args:
        directory: where the pieces live (created on demand).
        settings: everything that determines the pieces' content (JSON-ready); stored as
            the manifest.
        resume: keep the pieces a previous run with the same settings finished (a
            previous run with other settings is refused with a :class:`CheckpointError`
            naming them); without it, any previous checkpoint in ``directory`` is
            discarded: the job starts fresh.

    Raises:
        CheckpointError: with ``resume``, when the manifest in ``directory`` holds other
            settings, or is damaged.

    """

    MANIFEST = "manifest.json"

    def __init__(self, directory: str | Path, settings: dict[str, Any], *, resume: bool) -> None:
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from disk
        manifest = self.directory / self.MANIFEST
        if resume and manifest.is_file():
            try:
                stored = json.loads(manifest.read_text("utf-8"))
            except (OSError, ValueError) as error:
                raise CheckpointError(
                    f"{manifest}: is damaged ({error}); rerun with {FRESH_FLAG} to start over"
                ) from None
            check_same_settings(f"the checkpoint in {self.directory}", stored, self.settings)
        else:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            write_json_atomic(manifest, self.settings)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def __contains__(self, name: object) -> bool:
        """Whether the finished piece ``name`` is on disk (without reading it)."""
        return isinstance(name, str) and self._path(name).is_file()

    def load(self, name: str) -> dict[str, Any] | None:
        """The finished piece ``name``, or ``None`` when it is not on disk."""
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            piece: dict[str, Any] = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"{path}: is damaged ({error}); delete it, or rerun with {FRESH_FLAG} to start over"
            ) from None
        return piece

    def save(self, name: str, piece: dict[str, Any]) -> None:
        """Write the finished piece ``name`` atomically."""
        write_json_atomic(self._path(name), piece)

    @staticmethod
    def discard_directory(directory: str | Path) -> None:
        """Remove a checkpoint directory (the job's result is safely written)."""
        shutil.rmtree(directory, ignore_errors=True)
