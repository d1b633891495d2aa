"""The detector contract: fit on clean data, score inputs, flag above a threshold, save.

Carlini and Wagner (2017), "Adversarial examples are not easily detected: bypassing ten
detection methods", judge each detector by the same few operations, which every
detector here implements:

- :meth:`Detector.fit` builds the detector for one classifier from clean inputs and
  labels (a trained detector also makes the adversarial examples it learns from);
- :meth:`Detector.score` gives each input a score, higher for more likely adversarial,
  differentiable in the input where the detector can be (``differentiable``), so that a
  perfect-knowledge attacker can put it into its loss;
- :meth:`Detector.threshold_at` sets the threshold that flags a fraction ``fpr`` of
  held-out clean inputs, and :meth:`Detector.flags` applies it;
- :func:`save_detector` and :func:`load_detector` write and read a detector as a
  safetensors file (tensors) with a JSON header (its name, its settings, the format
  version, the digest of the classifier it was fitted on): never a pickle.

A detector is an ``nn.Module``: its learned parts are submodules and buffers, built by
:meth:`Detector.build` from its settings and the data's shape alone, so that a file
restores them exactly. Set-level tests (Grosse et al.'s maximum mean discrepancy) decide
about a whole sample rather than a point; they set ``set_level`` and score a point by its
contribution to the statistic.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor, nn

from vulnscope._checkpoint import tensor_digest
from vulnscope._io import write_bytes_atomic
from vulnscope._validation import (
    check_fraction,
    check_inputs,
    check_labels,
    check_model,
    check_seed,
    describe,
)
from vulnscope.errors import DataError, InvalidArgumentError, MissingFileError, ModelError

__all__ = [
    "DETECTOR_FORMAT",
    "Detector",
    "detector_bytes",
    "load_detector",
    "model_digest",
    "save_detector",
]

DETECTOR_FORMAT = 1
"""Version of the detector file's layout; a file of another version is refused."""

Model = Callable[[Tensor], Tensor]

_BOUNDS = (0.0, 1.0)
"""The input box of every detector's data (vulnscope's images)."""


def model_digest(model: Model) -> str:
    """SHA-256 of a classifier's parameters and buffers (``""`` for a plain function)."""
    if not isinstance(model, nn.Module):
        return ""
    return tensor_digest([*model.parameters(), *model.buffers()])


class Detector(nn.Module, abc.ABC):
    """Base class of every detector (see the module docstring).

    Subclasses take their settings as keyword-only constructor arguments and store them
    under the same names (:meth:`settings` reads them back for the file), and implement
    :meth:`build`, :meth:`fit_parts` and :meth:`raw_score`.

    Attributes:
        name: the short name of :data:`vulnscope.detect.DETECTORS`.
        paper: the paper the design comes from.
        differentiable: :meth:`score` is differentiable in the input (else an adaptive
            attack needs BPDA or EOT).
        stochastic: :meth:`score` is random (dropout at test time): an adaptive attack
            averages its gradient over several passes (EOT).
        set_level: the detector is a test on a set of inputs.
        threshold: the flagging threshold (NaN until :meth:`threshold_at`).
        input_shape: (C, H, W) of the inputs it was fitted on.
        num_classes: the classifier's outputs.
        fitted_on: :func:`model_digest` of that classifier.

    """

    name: ClassVar[str]
    paper: ClassVar[str]
    differentiable: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    set_level: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.threshold = math.nan
        self.input_shape: tuple[int, ...] = ()
        self.num_classes = 0
        self.fitted_on = ""
        self._model: Model | None = None

    # -- what subclasses provide ---------------------------------------------------------

    @abc.abstractmethod
    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Create the learned parts (submodules, buffers) at their final shapes."""

    @abc.abstractmethod
    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Learn the parts from clean ``x`` (N, C, H, W) and labels ``y`` (N,)."""

    @abc.abstractmethod
    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """(N,) scores of ``x``, higher for more likely adversarial (may keep the graph)."""

    # -- the contract --------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments, as stored (JSON-ready)."""
        import inspect

        names = [
            name
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        return {name: getattr(self, name) for name in names}

    def fit(self, model: Model, inputs: Tensor, labels: Tensor, *, seed: int | None = 0) -> Self:
        """Fit the detector to ``model`` on clean ``inputs`` (N, C, H, W) and ``labels`` (N,).

        Returns:
            the detector itself, fitted (its threshold is still unset).

        """
        model = check_model(model)
        x = check_inputs(inputs, bounds=_BOUNDS, name="inputs")
        y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
        key = check_seed(seed)
        with torch.no_grad():
            logits = model(x[:2])
        self.input_shape = tuple(int(d) for d in x.shape[1:])
        self.num_classes = int(logits.shape[1])
        self.build(self.input_shape, self.num_classes)
        generator = torch.Generator(device=x.device)
        generator.manual_seed(0 if key is None else key)
        self.fit_parts(model, x, y, generator)
        self.fitted_on = model_digest(model)
        self._bind(model)
        self.threshold = math.nan
        return self.eval()

    def attach(self, model: Model) -> Self:
        """Use this (loaded) detector with ``model``, the classifier it was fitted on.

        Raises:
            ModelError: ``model`` is not that classifier (its parameters differ).

        """
        model = check_model(model)
        digest = model_digest(model)
        if self.fitted_on and digest != self.fitted_on:
            raise ModelError(
                f"the {self.name} detector was fitted on another model (digest "
                f"{self.fitted_on[:12]}…), not this one ({digest[:12] or 'a plain function'}…)"
            )
        self._bind(model)
        return self

    def _bind(self, model: Model) -> None:
        # not a submodule: the classifier is neither part of the detector's state nor its file
        object.__setattr__(self, "_model", model)

    @property
    def model(self) -> Model:
        """The classifier the detector was fitted on (or attached to)."""
        if self._model is None:
            raise InvalidArgumentError(
                f"the {self.name} detector has no model: call fit(model, ...) or attach(model)"
            )
        return self._model

    def score(self, inputs: Tensor) -> Tensor:
        """(N,) scores of ``inputs``: higher means more likely adversarial.

        Differentiable in ``inputs`` when :attr:`differentiable` (call it under
        ``torch.enable_grad()`` with ``inputs.requires_grad``).
        """
        x = self._checked(inputs)
        return self.raw_score(self.model, x)

    def threshold_at(self, fpr: float, clean: Tensor) -> float:
        """Set the threshold that flags a fraction ``fpr`` of the held-out ``clean`` inputs.

        Args:
            fpr: the false-positive rate on clean data, in (0, 1).
            clean: (M, C, H, W) clean inputs not used to fit the detector.

        Returns:
            the threshold: the ``1 - fpr`` quantile of their scores (an input is flagged
            when its score is strictly above it).

        Raises:
            InvalidArgumentError: fewer than ``1 / fpr`` clean inputs, too few to set a
                threshold at that rate.

        """
        rate = check_fraction(fpr, "fpr")
        if not 0.0 < rate < 1.0:
            raise InvalidArgumentError(f"fpr must lie strictly between 0 and 1, got {rate}")
        x = self._checked(clean, name="clean")
        needed = math.ceil(1.0 / rate)
        if x.shape[0] < needed:
            raise InvalidArgumentError(
                f"clean: a threshold at fpr {rate:g} needs at least {needed} clean inputs, "
                f"got {x.shape[0]}"
            )
        with torch.no_grad():
            scores = self.raw_score(self.model, x).double()
        self.threshold = float(torch.quantile(scores, 1.0 - rate))
        return self.threshold

    def flags(self, inputs: Tensor) -> Tensor:
        """(N,) bool: the inputs whose score is above the threshold."""
        if math.isnan(self.threshold):
            raise InvalidArgumentError(
                f"the {self.name} detector has no threshold: call threshold_at(fpr, clean)"
            )
        with torch.no_grad():
            return self.score(inputs) > self.threshold

    def _checked(self, inputs: Any, name: str = "inputs") -> Tensor:
        x = check_inputs(inputs, bounds=_BOUNDS, name=name)
        if not self.input_shape:
            raise InvalidArgumentError(f"the {self.name} detector is not fitted: call fit first")
        if tuple(x.shape[1:]) != self.input_shape:
            raise InvalidArgumentError(
                f"{name} must be shaped (N, {', '.join(map(str, self.input_shape))}) as the "
                f"data the detector was fitted on, got {describe(x)}"
            )
        return x


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Write a fitted detector to ``path`` atomically (safetensors and a JSON header).

    Returns:
        ``path``.

    """
    return write_bytes_atomic(path, detector_bytes(detector))


def detector_bytes(detector: Detector) -> bytes:
    """A fitted detector as the bytes :func:`save_detector` writes (safetensors)."""
    if not isinstance(detector, Detector):
        raise InvalidArgumentError(f"detector must be a Detector, got {type(detector).__name__}")
    if not detector.input_shape:
        raise InvalidArgumentError(f"the {detector.name} detector is not fitted: nothing to save")
    header = {
        "format": str(DETECTOR_FORMAT),
        "detector": detector.name,
        "settings": json.dumps(detector.settings(), sort_keys=True),
        "input_shape": json.dumps(list(detector.input_shape)),
        "num_classes": str(detector.num_classes),
        "fitted_on": detector.fitted_on,
        "threshold": repr(detector.threshold),
    }
    state = {key: value.detach().cpu().contiguous() for key, value in detector.state_dict().items()}
    return save(state, metadata=header)


def load_detector(
    path: str | Path | bytes,
    model: Model,
    *,
    registry: Mapping[str, type[Detector]] | None = None,
) -> Detector:
    """Read a detector written by :func:`save_detector` and attach it to ``model``.

    Args:
        path: the file, or its bytes (:func:`detector_bytes`).
        model: the classifier it was fitted on (checked by digest).
        registry: the detector classes by name (default :data:`vulnscope.detect.DETECTORS`).

    Raises:
        MissingFileError: no such file.
        DataError: not a detector file, or one of another format version.
        ModelError: ``model`` is not the classifier it was fitted on.

    """
    if registry is None:
        from vulnscope.detect.registry import DETECTORS

        registry = DETECTORS
    if isinstance(path, bytes):
        raw, where = path, "detector bytes"
    else:
        file = Path(path)
        if not file.is_file():
            raise MissingFileError(f"detector file {str(file)!r} does not exist")
        raw, where = file.read_bytes(), str(file)
    try:
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]).get("__metadata__", {})
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise DataError(f"{where}: not a detector file ({error})") from None
    if header.get("format") != str(DETECTOR_FORMAT):
        raise DataError(
            f"{where}: a detector file of format {header.get('format', 'unknown')!r}; this "
            f"vulnscope reads format {DETECTOR_FORMAT}: refit the detector and save it again"
        )
    name = header.get("detector", "")
    if name not in registry:
        raise DataError(f"{where}: unknown detector {name!r}; known: {sorted(registry)}")
    try:
        detector = registry[name](**json.loads(header["settings"]))
        detector.input_shape = tuple(json.loads(header["input_shape"]))
        detector.num_classes = int(header["num_classes"])
        detector.fitted_on = header["fitted_on"]
        detector.threshold = float(header["threshold"])
        detector.build(detector.input_shape, detector.num_classes)
        detector.load_state_dict(load(raw))
    except (KeyError, ValueError, TypeError, RuntimeError, SafetensorError) as error:
        raise DataError(f"{where}: a damaged {name} detector file ({error})") from None
    return detector.eval().attach(model)
