"""Geometry diagnostics for any differentiable classifier (RG.md section 6).

The questions the RG analysis asks of a deep RBM network, asked of any PyTorch classifier:

- the input Fisher information, its top eigenpairs and trace (:func:`input_fisher`);
- the curvature of the loss: the input Hessian's top eigenpairs
  (:func:`input_hessian_eigenvalues`), trace and Frobenius norm by Hutchinson
  (:func:`input_hessian_norms`), its eigenvalue density by stochastic Lanczos quadrature
  (:func:`input_hessian_spectrum`) and the quadratic-model bounds on the minimal
  perturbation (:func:`curvature_bounds`);
- layer amplification, block by block (:func:`layer_amplification`);
- decision-boundary cross-sections (:func:`decision_boundary_section`);
- class-change distances along chosen directions (:func:`class_change_distances`);
- all of it on a data set, written to files (:func:`run_diagnostics`, ``vulnscope diagnose``).
"""

from vulnscope.diagnostics.curvature_bounds import CurvatureBounds, curvature_bounds
from vulnscope.diagnostics.distance import (
    class_change_distances,
    line_search_class_change,
    model_classifier,
)
from vulnscope.diagnostics.fisher import FisherResult, input_fisher, logit_jacobian
from vulnscope.diagnostics.geometry import BoundarySection, decision_boundary_section
from vulnscope.diagnostics.hessian import (
    HessianResult,
    input_hessian_eigenvalues,
    input_hessian_norms,
)
from vulnscope.diagnostics.hutchinson import HutchinsonEstimate, hutchinson
from vulnscope.diagnostics.lanczos import (
    Krylov,
    RitzPairs,
    lanczos,
    random_start_ritz_pairs,
    ritz_pairs,
)
from vulnscope.diagnostics.layers import LayerAmplification, layer_amplification
from vulnscope.diagnostics.spectral_density import (
    SpectralDensity,
    input_hessian_spectrum,
    stochastic_lanczos_quadrature,
)

__all__ = [
    "BoundarySection",
    "CurvatureBounds",
    "FisherResult",
    "HessianResult",
    "HutchinsonEstimate",
    "Krylov",
    "LayerAmplification",
    "RitzPairs",
    "SpectralDensity",
    "class_change_distances",
    "curvature_bounds",
    "decision_boundary_section",
    "hutchinson",
    "input_fisher",
    "input_hessian_eigenvalues",
    "input_hessian_norms",
    "input_hessian_spectrum",
    "lanczos",
    "layer_amplification",
    "line_search_class_change",
    "logit_jacobian",
    "model_classifier",
    "random_start_ritz_pairs",
    "ritz_pairs",
    "stochastic_lanczos_quadrature",
]
