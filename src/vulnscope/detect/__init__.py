"""Detecting adversarial examples, and breaking the detectors (Carlini and Wagner 2017).

Every detector follows one contract (:class:`Detector`: ``fit`` on clean data, ``score``
higher for adversarial and differentiable where it can be, ``threshold_at`` a
false-positive rate on held-out clean data, safetensors files with a format version and
the fitted classifier's digest). :data:`DETECTORS` holds the ten Carlini and Wagner broke,
each with its paper's design scaled to the 8×8 digits, plus MagNet's and a stacked
denoising autoencoder's reconstruction error:

- trained on adversarial examples: Grosse et al.'s extra class (``extra-class``), Gong et
  al.'s binary classifier (``binary``), Metzen et al.'s detector subnetwork on an inner
  layer (``subnetwork``);
- statistics: Hendrycks and Gimpel's PCA coefficients (``pca-statistics``), Bhagoji et
  al.'s PCA-reduced classifier (``pca-reduced``), Li and Li's cascade on convolutional
  PCA statistics (``conv-cascade``), Grosse et al.'s maximum mean discrepancy test
  (``mmd``, set-level: :func:`mmd_test`, :func:`mmd_power`);
- the network's behaviour: Feinman et al.'s kernel density (``density``) and dropout
  uncertainty (``dropout``), Li and Li's mean blur (``blur``);
- reconstruction: MagNet's autoencoder (``magnet-reconstruction``) and a stacked denoising
  autoencoder (``sdae``, :mod:`vulnscope.defences.sdae`).

:func:`evaluate_detector` judges one under zero, perfect (C&W's combined loss through the
score, :class:`DetectorAwareCW`) and limited knowledge (the attacker fits its own copy).
``vulnscope defend --method <detector>`` stores a fitted detector inside the model file
(:func:`save_detected`), and the audit's ``detect`` stage evaluates it.
"""

from vulnscope.detect.adaptive import DetectorAttackResult, DetectorAwareCW, gradient_mode
from vulnscope.detect.base import (
    DETECTOR_FORMAT,
    Detector,
    detector_bytes,
    load_detector,
    model_digest,
    save_detector,
)
from vulnscope.detect.binary import BinaryDetector
from vulnscope.detect.blur import MeanBlur
from vulnscope.detect.cascade import ConvCascade
from vulnscope.detect.density import DensityDetector
from vulnscope.detect.detected import Detected, load_detected, save_detected
from vulnscope.detect.digits import DigitsDetector, detect_digits
from vulnscope.detect.dropout import DropoutDetector
from vulnscope.detect.evaluation import (
    KNOWLEDGE,
    ROC,
    DetectionReport,
    evaluate_detector,
    roc_curve,
)
from vulnscope.detect.extra_class import ExtraClassDetector
from vulnscope.detect.mmd import MMDTest, mmd_power, mmd_test
from vulnscope.detect.pca import PCAReduced, PCAStatistics
from vulnscope.detect.reconstruction import ReconstructionDetector
from vulnscope.detect.registry import DETECTORS
from vulnscope.detect.sdae import SDAEDetector
from vulnscope.detect.subnetwork import SubnetworkDetector

__all__ = [
    "DETECTORS",
    "DETECTOR_FORMAT",
    "KNOWLEDGE",
    "ROC",
    "BinaryDetector",
    "ConvCascade",
    "DensityDetector",
    "Detected",
    "DetectionReport",
    "Detector",
    "DetectorAttackResult",
    "DetectorAwareCW",
    "DigitsDetector",
    "DropoutDetector",
    "ExtraClassDetector",
    "MMDTest",
    "MeanBlur",
    "PCAReduced",
    "PCAStatistics",
    "ReconstructionDetector",
    "SDAEDetector",
    "SubnetworkDetector",
    "detect_digits",
    "detector_bytes",
    "evaluate_detector",
    "gradient_mode",
    "load_detected",
    "load_detector",
    "mmd_power",
    "mmd_test",
    "model_digest",
    "roc_curve",
    "save_detected",
    "save_detector",
]
