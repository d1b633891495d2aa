"""Checkpoints of a long job: one atomically written JSON file per finished piece.

A job that is killed (Ctrl-C, SIGKILL, a lost machine) leaves every finished piece on
disk and never half a file; rerun with ``resume=True`` it skips them. A manifest holds
the job's settings, and a checkpoint made with other settings is refused rather than
mixed into the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from vulnscope._io import write_json_atomic
from vulnscope.errors import CheckpointError

__all__ = ["CheckpointError", "Checkpoints"]


class Checkpoints:
    """The finished pieces of one job in a directory.

    Args:
        directory: where the pieces live (created on demand).
        settings: everything that determines the pieces' content (JSON-ready); stored as
            the manifest.
        resume: keep the pieces a previous run with the same settings finished; without
            it, any previous checkpoint in ``directory`` is discarded.

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
                    f"{manifest}: is damaged ({error}); rerun without --resume"
                ) from None
            if stored != self.settings:
                changed = sorted(
                    key for key in set(stored) | set(self.settings)
                    if stored.get(key) != self.settings.get(key)
                )  # fmt: skip
                raise CheckpointError(
                    f"the checkpoint in {self.directory} was made with other settings "
                    f"({', '.join(changed)}); rerun with the same options, or without --resume"
                )
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
            raise CheckpointError(f"{path}: is damaged ({error}); rerun without --resume") from None
        return piece

    def save(self, name: str, piece: dict[str, Any]) -> None:
        """Write the finished piece ``name`` atomically."""
        write_json_atomic(self._path(name), piece)

    @staticmethod
    def discard_directory(directory: str | Path) -> None:
        """Remove a checkpoint directory (the job's result is safely written)."""
        shutil.rmtree(directory, ignore_errors=True)
