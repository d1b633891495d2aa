"""Perturbations beyond the Lp ball: what a classifier meets outside the attacks' balls.

Fawzi's survey of a classifier's robustness (NIPS 2016; the 2019 talk in the papers) asks
for more than adversarial Lp perturbations: geometric transformations, random noise, and
occlusions. This package measures them on the same footing, on any PyTorch classifier of
images (N, C, H, W):

- **Spatial transformations** (Engstrom et al. 2019): :func:`spatial_worst_case` tries
  every rotation, (dx, dy) translation and scale of a grid (:func:`default_spatial_grid`
  scales Engstrom's ±3 px, ±30° to the image); :func:`worst_of_k` draws k at random;
  :func:`spatial_first_order` climbs the loss in the transformation's parameters.
  :class:`~vulnscope.attacks.StAdv` (Xiao et al. 2018), re-exported here, moves pixels
  along a smooth flow field.
- **Random and semi-random noise** (Fawzi et al. 2016): :func:`noise_robustness`, the
  smallest noise along random directions or inside a random subspace that changes the
  class, against the minimal adversarial norm and the predictions √d and √(d/m).
- **Occlusion** (Zeiler and Fergus 2014; Sharif et al. 2016): :func:`occlusion_worst_case`,
  the sliding patch that hurts most and the map of the prediction's drop.
- **Verified manipulations** (Huang et al. 2017): families affine in their parameters
  (:func:`brightness_contrast`, :func:`scratch`, :func:`free_pixels`) certified over their
  whole parameter box by :func:`verify_manipulation`, and finite grids checked
  exhaustively by :func:`verify_transformations`: verified, a counterexample, or unknown.

The audit's ``beyond-lp`` stage runs the grid, the noise and the patch on its sample.
"""

from vulnscope.attacks.stadv import FlowResult, StAdv
from vulnscope.perturbations.manipulations import (
    BrightnessContrast,
    FreePixels,
    Manipulation,
    Scratch,
    brightness_contrast,
    free_pixels,
    scratch,
)
from vulnscope.perturbations.noise import KINDS, NoiseRobustness, noise_robustness
from vulnscope.perturbations.occlusion import OcclusionResult, occlusion_worst_case
from vulnscope.perturbations.spatial import (
    TransformResult,
    spatial_first_order,
    spatial_worst_case,
    worst_of_k,
    worst_over_transformations,
)
from vulnscope.perturbations.transforms import (
    SpatialGrid,
    affine_transform,
    default_spatial_grid,
    transformation_grid,
)
from vulnscope.perturbations.verified import (
    STATUSES,
    ManipulationVerification,
    verify_manipulation,
    verify_transformations,
)

__all__ = [
    "KINDS",
    "STATUSES",
    "BrightnessContrast",
    "FlowResult",
    "FreePixels",
    "Manipulation",
    "ManipulationVerification",
    "NoiseRobustness",
    "OcclusionResult",
    "Scratch",
    "SpatialGrid",
    "StAdv",
    "TransformResult",
    "affine_transform",
    "brightness_contrast",
    "default_spatial_grid",
    "free_pixels",
    "noise_robustness",
    "occlusion_worst_case",
    "scratch",
    "spatial_first_order",
    "spatial_worst_case",
    "transformation_grid",
    "verify_manipulation",
    "verify_transformations",
    "worst_of_k",
    "worst_over_transformations",
]
