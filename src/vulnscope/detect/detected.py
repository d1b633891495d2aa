"""A classifier shipped with its detector: what ``vulnscope defend --method <detector>`` writes.

The model file is the classifier's TorchScript archive with the detector's safetensors
bytes stored inside it (:data:`DETECTOR_FILE`), so one file carries both and nothing is
unpickled. Reading it back gives a :class:`Detected`: an ``nn.Sequential`` of the
classifier alone (rebuilt as an eager module where it can be, so that detectors can hook
its layers) (every stage of the audit attacks it as it would the bare model), with
the detector beside it, which the audit's ``detect`` stage evaluates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vulnscope.certify.scripted import eager_equivalent, is_scripted
from vulnscope.detect.base import Detector, detector_bytes, load_detector, model_digest
from vulnscope.errors import InvalidTypeError, ModelError
from vulnscope.models.saving import DETECTOR_FILE_NAME, save_torchscript, torchscript_extra

__all__ = ["DETECTOR_FILE", "Detected", "load_detected", "save_detected"]

DETECTOR_FILE = DETECTOR_FILE_NAME
"""Name of the detector's bytes inside the model file's TorchScript archive."""


class Detected(nn.Sequential):
    """A classifier (its only layer) and the detector fitted on it.

    The detector is not a submodule: the model computes the classifier's logits and
    nothing else, and its digest is the classifier's.

    Args:
        classifier: the classifier the detector was fitted on.
        detector: the fitted detector (attached to ``classifier``).

    """

    def __init__(self, classifier: nn.Module, detector: Detector) -> None:
        if not isinstance(detector, Detector):
            raise InvalidTypeError(f"detector must be a Detector, got {type(detector).__name__}")
        super().__init__(classifier)
        object.__setattr__(self, "detector", detector.attach(classifier))

    detector: Detector


def save_detected(
    classifier: nn.Module, detector: Detector, path: str | Path, *, metadata: dict[str, Any]
) -> Path:
    """Write ``classifier`` as TorchScript with ``detector`` inside the archive, atomically."""
    detector.attach(classifier)  # refuses a detector fitted on another model
    return save_torchscript(
        classifier, path, metadata=metadata, extra_files={DETECTOR_FILE: detector_bytes(detector)}
    )


def load_detected(path: str | Path, classifier: nn.Module) -> Detected | None:
    """The :class:`Detected` of a model file with a detector inside, else ``None``.

    Args:
        path: a TorchScript model file.
        classifier: the model read from it (by :func:`vulnscope.models.load_model`).

    """
    stored = torchscript_extra(path, DETECTOR_FILE)
    if not stored:
        return None
    detector = load_detector(stored, classifier)
    return Detected(_eager(classifier, detector.input_shape), detector)


def _eager(classifier: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """An eager module computing what the scripted ``classifier`` does (else itself).

    Detectors that read hidden layers hook the classifier's modules, which TorchScript
    refuses; :func:`~vulnscope.certify.scripted.eager_equivalent` rebuilds the module tree
    with the same parameter tensors, kept only if it gives the same logits on a probe.
    """
    if not is_scripted(classifier):
        return classifier
    try:
        eager = eager_equivalent(classifier).eval()
    except ModelError:
        return classifier
    probe = torch.rand((4, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(eager(probe), classifier(probe), rtol=1e-5, atol=1e-6)
    return eager if same and model_digest(eager) == model_digest(classifier) else classifier
