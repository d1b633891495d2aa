"""Why a classifier is vulnerable: explanations of its decisions and of their failures.

- **Relevance** (Bach et al. 2015; Montavon et al. 2019): :func:`lrp` in one backward
  pass, with LRP-0, ε, γ, z⁺ and the input rules zᴮ and flat, per layer through a
  composite (:data:`DEFAULT_COMPOSITE`: zᴮ at the input, γ for convolutions, ε for dense
  layers); :func:`lrp_layers` for conservation.
- **Concepts** (Achtibat et al. 2023): :func:`crp`, relevance conditioned on a layer's
  channels; :func:`concept_atlas`, each concept's most relevant and most activating
  inputs; :func:`concept_shift`, the concepts an adversarial perturbation switches on and
  off at each layer and where it acts (:func:`fisher_concept_shift`: the same along the
  input Fisher's dangerous direction).
- **Units against random directions** (Szegedy et al. 2014): :func:`unit_analysis` and
  :func:`compare_directions`, label purity and coherence of the top inputs, with
  bootstrap intervals.
- **Counterfactuals in generative coordinates** (Dombrowski et al. 2021, 2023): a RealNVP
  flow of the digits (:class:`AffineCouplingFlow`, :func:`train_flow`,
  :func:`pretrained_flow`) and :func:`counterfactual`, gradient ascent in its latent
  coordinates, beside the adversarial example.
- **Non-robust features** (Ilyas et al. 2019): :func:`non_robust_dataset` (D_det, D_rand),
  :func:`relabelled_clean` (the control) and :func:`robust_dataset` (D_R);
  ``experiments/non_robust_features.py`` trains on them.

The audit's ``explain`` stage runs LRP, the concept shifts and the counterfactuals on its
sample.
"""

from vulnscope.explain.concepts import ConceptShift, LayerShift, concept_shift, fisher_concept_shift
from vulnscope.explain.counterfactual import Counterfactual, OnManifoldFigures, counterfactual
from vulnscope.explain.crp import ConceptAtlas, concept_atlas, concept_relevance, crp
from vulnscope.explain.features import (
    MODES,
    RelabelledData,
    RobustData,
    non_robust_dataset,
    relabel_targets,
    relabelled_clean,
    robust_dataset,
)
from vulnscope.explain.flow import AffineCouplingFlow, bits_per_dim, load_flow, save_flow
from vulnscope.explain.flow_training import FlowRecipe, cached_flow, pretrained_flow, train_flow
from vulnscope.explain.lrp import DEFAULT_COMPOSITE, INPUT_LAYER, LayerRelevance, lrp, lrp_layers
from vulnscope.explain.rules import INPUT_RULES, LAYER_RULES
from vulnscope.explain.units import (
    DirectionComparison,
    Estimate,
    UnitAnalysis,
    compare_directions,
    unit_analysis,
)

__all__ = [
    "DEFAULT_COMPOSITE",
    "INPUT_LAYER",
    "INPUT_RULES",
    "LAYER_RULES",
    "MODES",
    "AffineCouplingFlow",
    "ConceptAtlas",
    "ConceptShift",
    "Counterfactual",
    "DirectionComparison",
    "Estimate",
    "FlowRecipe",
    "LayerRelevance",
    "LayerShift",
    "OnManifoldFigures",
    "RelabelledData",
    "RobustData",
    "UnitAnalysis",
    "bits_per_dim",
    "cached_flow",
    "compare_directions",
    "concept_atlas",
    "concept_relevance",
    "concept_shift",
    "counterfactual",
    "crp",
    "fisher_concept_shift",
    "load_flow",
    "lrp",
    "lrp_layers",
    "non_robust_dataset",
    "pretrained_flow",
    "relabel_targets",
    "relabelled_clean",
    "robust_dataset",
    "save_flow",
    "train_flow",
    "unit_analysis",
]
