"""A detector fitted on the reference digits CNN: what ``vulnscope defend --method <name>`` does.

The detector (any of :data:`~vulnscope.detect.registry.DETECTORS`, with its defaults) is
fitted on the first 1000 images of the digits training split and its threshold set at
:data:`DETECTOR_FPR` false positives on the other 400, so that the test split stays
unseen for the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from vulnscope._threads import fixed_threads
from vulnscope._validation import check_choice, check_seed
from vulnscope.data.digits import load_digits
from vulnscope.detect.base import Detector
from vulnscope.detect.registry import DETECTORS
from vulnscope.models.cache import pretrained

__all__ = ["DETECTOR_FIT", "DETECTOR_FPR", "DigitsDetector", "detect_digits"]

DETECTOR_FIT = 1000
"""Training images the detector is fitted on; the rest of the split sets its threshold."""

DETECTOR_FPR = 0.05
"""The share of held-out clean images the threshold flags."""


@dataclass(frozen=True)
class DigitsDetector:
    """The reference CNN, the detector fitted on it, and how.

    Attributes:
        classifier: the reference digits CNN (eval mode).
        detector: the fitted detector, its threshold set.
        settings: the method, the detector's settings, the seed (JSON-ready).

    """

    classifier: nn.Module
    detector: Detector
    settings: dict[str, Any]


def detect_digits(method: str, *, seed: int = 0) -> DigitsDetector:
    """Fit the detector ``method`` on the reference digits CNN (see the module docstring)."""
    method = check_choice(method, "method", tuple(DETECTORS))
    seed = check_seed(seed) or 0
    classifier = pretrained("digits-cnn")
    train = load_digits("train")
    with fixed_threads(1):
        detector = DETECTORS[method]().fit(
            classifier, train.x[:DETECTOR_FIT], train.y[:DETECTOR_FIT], seed=seed
        )
        detector.threshold_at(DETECTOR_FPR, train.x[DETECTOR_FIT:])
    settings = {"detector": detector.settings(), "fpr": DETECTOR_FPR, "seed": seed}
    return DigitsDetector(classifier, detector, settings)
