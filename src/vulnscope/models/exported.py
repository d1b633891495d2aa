"""``torch.export`` programs (``.pt2`` files), loaded without unpickling arbitrary objects."""

from __future__ import annotations

import contextlib
import functools
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vulnscope.errors import ModelError

__all__ = ["load_exported_program"]

_EXPORT_ADVICE = (
    "export it with torch.export.export(model, (example,), dynamic_shapes=({0: "
    "torch.export.Dim('batch')},)) and save it with torch.export.save"
)


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Inside the block, every ``torch.load`` runs with ``weights_only=True``.

    ``torch.export.load`` reads the program's weights and constants with
    ``torch.load(weights_only=True)`` but, when that fails, falls back to
    ``weights_only=False``: arbitrary unpickling, which a crafted file would use to run
    code. With the fallback forced back to ``weights_only=True`` such a file is refused.
    """
    original = torch.load

    @functools.wraps(original)
    def weights_only(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = weights_only
    try:
        yield
    finally:
        torch.load = original


def load_exported_program(path: str | Path) -> nn.Module:
    """Load a ``torch.export`` program saved with ``torch.export.save`` as a module.

    The program must take one input whose first dimension (the batch) is dynamic:
    attacks call the model on batches of every size, and a program exported with a
    fixed batch size refuses them.

    Args:
        path: the ``.pt2`` file.

    Returns:
        The program as an ``nn.Module`` (``ExportedProgram.module()``), on the CPU.

    """
    path = Path(path)
    try:
        with _weights_only_torch_load():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError:
        raise ModelError(
            f"{path}: holds pickled Python objects beyond tensors, and vulnscope never "
            f"unpickles arbitrary objects; {_EXPORT_ADVICE}"
        ) from None
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path}: is not a readable torch.export program ({first})") from None
    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    if len(user_inputs) != 1:
        raise ModelError(
            f"{path}: the program takes {len(user_inputs)} inputs; a classifier takes one "
            "batch of images"
        )
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            batch = node.meta["val"].shape[0]
            if isinstance(batch, int):
                raise ModelError(
                    f"{path}: was exported for batches of exactly {batch}; {_EXPORT_ADVICE}"
                )
    module: nn.Module = program.module()
    return module
