"""Saving and loading deep RBM networks as safetensors (no pickle anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from vulnscope._io import write_bytes_atomic
from vulnscope.errors import DataError, MissingFileError
from vulnscope.rbm.network import DeepRBM

__all__ = ["load_deep_rbm", "save_deep_rbm"]

_FORMAT = "vulnscope.DeepRBM/1"


def save_deep_rbm(
    network: DeepRBM, path: str | Path, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write the network's weights and shape to a safetensors file, atomically.

    Args:
        network: the network to save.
        path: destination file (``.safetensors`` by convention).
        metadata: extra string fields stored in the file header (a training recipe...).

    """
    header = {
        "format": _FORMAT,
        "widths": json.dumps(network.widths),
        "num_classes": str(network.num_classes),
        **(metadata or {}),
    }
    state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    return write_bytes_atomic(path, save(state, metadata=header))


def load_deep_rbm(path: str | Path) -> DeepRBM:
    """Read a network written by :func:`save_deep_rbm`; it comes back in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"deep RBM file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise DataError(f"{str(path)!r} is not a readable safetensors file: {error}") from None
    if header.get("format") != _FORMAT:
        raise DataError(
            f"{str(path)!r} is not a deep RBM saved by vulnscope "
            f"(format {header.get('format')!r}, expected {_FORMAT!r})"
        )
    try:
        widths = [int(width) for width in json.loads(header["widths"])]
        network = DeepRBM(widths, int(header["num_classes"]), seed=0)
        network.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise DataError(f"{str(path)!r} holds an inconsistent deep RBM: {error}") from None
    return network.eval()
