"""The renormalisation-group reading of a deep RBM network (Kenway 2018).

Operators (:class:`OperatorSet`), exact couplings of small layers (:func:`exact_couplings`,
:func:`coupling_map`), the generic Monte Carlo RG estimator of a stability matrix
(:func:`stability_matrix`), and the vulnerability analysis built on them: per input
(:func:`analyse_input`), over a data set (:func:`rg_analysis`), against depth
(:func:`depth_study`), and as the ``vulnscope rg`` job (:func:`run_rg`).
"""

from vulnscope.rg.analysis import OPERATOR_CHOICES, InputRG, analyse_input, choose_operators
from vulnscope.rg.distance import class_change_distances, frozen_noise_classifier
from vulnscope.rg.exact import (
    coupling_map,
    distribution_from_couplings,
    exact_couplings,
    walsh_hadamard,
)
from vulnscope.rg.job import run_rg
from vulnscope.rg.mcrg import Spectrum, StabilityMatrix, stability_matrix
from vulnscope.rg.operators import OperatorSet
from vulnscope.rg.study import DepthStudy, RGReport, depth_study, mean_field_fisher, rg_analysis

__all__ = [
    "OPERATOR_CHOICES",
    "DepthStudy",
    "InputRG",
    "OperatorSet",
    "RGReport",
    "Spectrum",
    "StabilityMatrix",
    "analyse_input",
    "choose_operators",
    "class_change_distances",
    "coupling_map",
    "depth_study",
    "distribution_from_couplings",
    "exact_couplings",
    "frozen_noise_classifier",
    "mean_field_fisher",
    "rg_analysis",
    "run_rg",
    "stability_matrix",
    "walsh_hadamard",
]
