"""The detectors by short name: what ``vulnscope defend --method`` and the audit accept."""

from __future__ import annotations

from vulnscope.detect.base import Detector
from vulnscope.detect.binary import BinaryDetector
from vulnscope.detect.blur import MeanBlur
from vulnscope.detect.cascade import ConvCascade
from vulnscope.detect.density import DensityDetector
from vulnscope.detect.dropout import DropoutDetector
from vulnscope.detect.extra_class import ExtraClassDetector
from vulnscope.detect.mmd import MMDTest
from vulnscope.detect.pca import PCAReduced, PCAStatistics
from vulnscope.detect.reconstruction import ReconstructionDetector
from vulnscope.detect.sdae import SDAEDetector
from vulnscope.detect.subnetwork import SubnetworkDetector

__all__ = ["DETECTORS"]

DETECTORS: dict[str, type[Detector]] = {}
"""Each detector class by its :attr:`~vulnscope.detect.base.Detector.name`; every class is
constructible with defaults that suit the 8×8 digits."""

DETECTORS["pca-statistics"] = PCAStatistics
DETECTORS["pca-reduced"] = PCAReduced
DETECTORS["extra-class"] = ExtraClassDetector
DETECTORS["binary"] = BinaryDetector
DETECTORS["subnetwork"] = SubnetworkDetector
DETECTORS["density"] = DensityDetector
DETECTORS["dropout"] = DropoutDetector
DETECTORS["sdae"] = SDAEDetector
DETECTORS["blur"] = MeanBlur
DETECTORS["magnet-reconstruction"] = ReconstructionDetector
DETECTORS["mmd"] = MMDTest
DETECTORS["conv-cascade"] = ConvCascade
