"""Certified robustness and exact verification.

Every robust-accuracy figure an attack gives is an upper bound; this package gives the
lower side. :func:`certify` proves, point by point, that no input within eps changes the
class (IBP, CROWN, α-CROWN, the Wong–Kolter dual); :func:`certified_radius` finds the
largest such eps. The bounds are computed on a graph read from the model
(:mod:`vulnscope.certify.graph`), one bounded operator per layer type
(:mod:`vulnscope.certify.bounds`).
"""

from vulnscope.certify.certificate import METHODS, Certificate, certified_radius, certify
from vulnscope.certify.exact_radius import exact_radius
from vulnscope.certify.verification import Verification, verify

__all__ = [
    "METHODS",
    "Certificate",
    "Verification",
    "certified_radius",
    "certify",
    "exact_radius",
    "verify",
]
