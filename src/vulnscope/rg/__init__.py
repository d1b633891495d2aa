"""The renormalisation-group reading of a deep RBM network (Kenway 2018).

Operators (:class:`OperatorSet`), exact couplings of small layers (:func:`exact_couplings`,
:func:`coupling_map`), the generic Monte Carlo RG estimator of a stability matrix
(:func:`stability_matrix`), and the vulnerability analysis built on them.
"""

from vulnscope.rg.exact import (
    coupling_map,
    distribution_from_couplings,
    exact_couplings,
    walsh_hadamard,
)
from vulnscope.rg.mcrg import Spectrum, StabilityMatrix, stability_matrix
from vulnscope.rg.operators import OperatorSet

__all__ = [
    "OperatorSet",
    "Spectrum",
    "StabilityMatrix",
    "coupling_map",
    "distribution_from_couplings",
    "exact_couplings",
    "stability_matrix",
    "walsh_hadamard",
]
