"""The detectors by short name: what ``vulnscope defend --method`` and the audit accept."""

from __future__ import annotations

from vulnscope.detect.base import Detector

__all__ = ["DETECTORS"]

DETECTORS: dict[str, type[Detector]] = {}
"""Each detector class by its :attr:`~vulnscope.detect.base.Detector.name`; every class is
constructible with defaults that suit the 8×8 digits."""
