"""Save a model as TorchScript, the model file every vulnscope command reads without unpickling."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vulnscope._io import write_bytes_atomic
from vulnscope.errors import InvalidTypeError, MissingFileError, ModelError

__all__ = [
    "DETECTOR_FILE_NAME",
    "METADATA_FILE",
    "save_torchscript",
    "torchscript_extra",
    "torchscript_metadata",
]

METADATA_FILE = "vulnscope.json"
"""Name of the JSON record stored inside the TorchScript archive (an "extra file")."""

DETECTOR_FILE_NAME = "vulnscope.detector.safetensors"
"""Name of a detector's bytes inside a model file (``vulnscope defend --method <detector>``)."""


def save_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Script ``model`` in eval mode and write it to ``path`` atomically.

    Args:
        model: the classifier; it must be scriptable (``torch.jit.script``).
        path: the file to write; a reader sees the old file or the new one, never half.
        metadata: a JSON-ready record stored in the archive as :data:`METADATA_FILE`
            (how the model was made), read back by :func:`torchscript_metadata`.
        extra_files: more files stored in the archive by name (a detector's, say), read
            back by :func:`torchscript_extra`.

    Returns:
        ``path``.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    extra: dict[str, str | bytes] = {
        **(extra_files or {}),
        METADATA_FILE: json.dumps(metadata or {}, sort_keys=True, allow_nan=False),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+ deprecates TorchScript
        try:
            scripted = torch.jit.script(model.eval())
        except Exception as error:  # scripting reports many kinds of error
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelError(f"{type(model).__name__} cannot be scripted: {first}") from None
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return write_bytes_atomic(path, buffer.getvalue())


def torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The record :func:`save_torchscript` stored in a TorchScript file (``{}`` if none)."""
    text = torchscript_extra(path, METADATA_FILE).decode()
    if not text:
        return {}
    record = json.loads(text)
    return record if isinstance(record, dict) else {}


def torchscript_extra(path: str | Path, name: str) -> bytes:
    """The file ``name`` stored in a TorchScript archive (``b""`` if it holds none)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file {str(path)!r} does not exist")
    extra: dict[str, Any] = {name: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"{path}: is not a TorchScript model ({error})") from None
    value = extra[name]
    return value if isinstance(value, bytes) else value.encode()
