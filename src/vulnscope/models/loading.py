"""Load a user's model without ever unpickling arbitrary Python objects.

The ways in:

- a reference model by name (``"digits-cnn"``, ``"digits-mlp"``, and the deep RBM
  ``"digits-rbm"``), trained or cached;
- ``"package.module:factory"``, a function that builds the architecture, plus a weights
  file: safetensors, or a state dict read by ``torch.load(..., weights_only=True)``;
- a TorchScript file (``torch.jit.script(model).save(path)``);
- a ``torch.export`` program (``torch.export.save(program, "model.pt2")``);
- an ONNX model (``torch.onnx.export(model, (x,), "model.onnx", ...)``), with the ``onnx``
  extra installed.

A file that would need arbitrary unpickling (``torch.save(model, path)``) is refused with
a message that says how to export the model instead.
"""

from __future__ import annotations

import importlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vulnscope.errors import MissingFileError, ModelError
from vulnscope.models.cache import PRETRAINED, pretrained
from vulnscope.models.exported import load_exported_program
from vulnscope.models.onnx_program import load_onnx_model

__all__ = ["DEEP_RBM", "load_model", "load_state_dict_file"]

DEEP_RBM = "digits-rbm"
"""The reference deep RBM network (4 RBMs, hidden width 64, binarised digits): the model
whose audit includes the RG analysis."""

_EXPORT_ADVICE = (
    "export it with torch.jit.script(model).save(PATH), or save model.state_dict() with "
    "safetensors.torch.save_file (or torch.save) and pass 'package.module:factory' plus "
    "the weights file"
)
_STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict or one nested under a usual checkpoint key."""
    if isinstance(loaded, Mapping):
        for key in _STATE_DICT_WRAPPERS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise ModelError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    return dict(loaded)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a ``.safetensors`` file or a ``weights_only`` torch file.

    Args:
        path: the file. ``.safetensors`` is read with safetensors; anything else with
            ``torch.load(weights_only=True)``, which refuses arbitrary objects. A state
            dict nested under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``
            is unwrapped.

    Returns:
        The state dict, on the CPU.

    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise ModelError(f"{path}: is not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:  # not a pickle at all: a corrupt or foreign file
            raise ModelError(
                f"{path}: is not a readable weights file (neither a torch file nor safetensors)"
            ) from None
        raise ModelError(
            f"{path}: holds pickled Python objects beyond tensors ({found.group(1)}), and "
            f"vulnscope never unpickles arbitrary objects; {_EXPORT_ADVICE}"
        ) from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ModelError(f"{path}: is not a readable weights file ({error})") from None
    return _unwrap_state_dict(loaded, path)


def _build_from_factory(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute.isidentifier():
        raise ModelError(f"model must be 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"cannot import {module_name!r} for model {spec!r} ({error}); "
            "is its directory on PYTHONPATH?"
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attribute!r} (model {spec!r})")
    try:
        model = factory()
    except Exception as error:  # the user's code: report it, do not crash on it
        raise ModelError(f"{spec}() failed: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}() must return a torch.nn.Module, returned {type(model).__name__}")
    return model


def _load_into(model: nn.Module, weights: str | Path, spec: str) -> None:
    state = load_state_dict_file(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])
        raise ModelError(f"weights {weights} do not fit model {spec!r}: {detail}") from None


def _load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # torch 2.9+ deprecates TorchScript, but it is what many users still export
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted: nn.Module = torch.jit.load(str(path), map_location="cpu")
        return scripted
    except (RuntimeError, ValueError) as script_error:
        first_line = str(script_error).strip().splitlines()[0] if str(script_error) else ""
        script_reason = first_line.split(". ")[0]  # the cause, not torch's advice after it
    if path.suffix == ".safetensors":
        raise ModelError(
            f"{path}: holds weights only; pass the architecture as 'package.module:factory' "
            "and this file as the weights"
        )
    try:
        load_state_dict_file(path)
    except ModelError as error:
        if "never unpickles" in str(error):
            raise
        raise ModelError(
            f"{path}: is not a model file vulnscope reads: not TorchScript ({script_reason}), "
            "not a torch.export program (.pt2), not a state dict"
        ) from None
    raise ModelError(
        f"{path}: holds a state dict, not a model; pass the architecture as "
        "'package.module:factory' and this file as the weights"
    )


def load_model(spec: str, *, weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """Build or load a classifier, in eval mode.

    Args:
        spec: a reference model name (see :data:`vulnscope.models.PRETRAINED`, and
            :data:`DEEP_RBM`),
            ``"package.module:factory"``, the path of a TorchScript file, of a
            ``torch.export`` program (``.pt2``, exported with a dynamic batch size), or
            of an ONNX model (``.onnx``, converted by
            :func:`vulnscope.models.onnx_program.load_onnx_model`; needs the ``onnx``
            extra, ``pip install 'vulnscope[onnx]'``).
        weights: weights to load into the model (for a reference model, replaces the
            cached training; for a factory, usually required).
        seed: seed of a reference model that has to be trained.

    Returns:
        The model in eval mode.

    """
    if spec == DEEP_RBM:
        if weights is not None:
            raise ModelError(f"{DEEP_RBM!r} is trained and cached by vulnscope; give no weights")
        from vulnscope.rbm.pretrained import pretrained_deep_rbm

        return pretrained_deep_rbm(depth=4, width=64, seed=seed).eval()
    if spec in PRETRAINED:
        if weights is None:
            return pretrained(spec, seed=seed)
        model = PRETRAINED[spec][0]()
        _load_into(model, weights, spec)
        return model.eval()
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise ModelError(
                f"weights are only used with 'package.module:factory' models, not {spec!r}"
            )
        if path.suffix == ".pt2":
            return load_exported_program(path)  # an exported graph has no train/eval mode
        if path.suffix == ".onnx":
            return load_onnx_model(path)
        return _load_torchscript(path).eval()
    if ":" in spec and not path.suffix:
        model = _build_from_factory(spec)
        if weights is not None:
            _load_into(model, weights, spec)
        return model.eval()
    if path.suffix or path.parent != Path("."):
        raise MissingFileError(f"model file {spec!r} does not exist")
    raise MissingFileError(
        f"model {spec!r} is neither a reference model ({', '.join([*PRETRAINED, DEEP_RBM])}), "
        "nor 'package.module:factory', nor an existing TorchScript file"
    )
