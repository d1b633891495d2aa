"""Clean accuracy, robust curves, the standard and adaptive cascades, minimal perturbations."""

from vulnscope.evaluate.accuracy import accuracy, predict
from vulnscope.evaluate.adaptive import (
    adaptive_chunk,
    adaptive_evaluation,
    adaptive_evaluation_curve,
)
from vulnscope.evaluate.cascade import cascade_chunk
from vulnscope.evaluate.cascade_attacks import CASCADE_ATTACKS, DEFAULT_CASCADE, check_cascade
from vulnscope.evaluate.masking import MaskingCheck, MaskingSymptoms
from vulnscope.evaluate.minimal import (
    MinimalPerturbations,
    merge_minimal_chunks,
    minimal_perturbations,
)
from vulnscope.evaluate.minimal_chunk import minimal_chunk
from vulnscope.evaluate.pieces import CascadeBudget, CascadeChunk, MinimalChunk
from vulnscope.evaluate.plots import plot_minimal_perturbations
from vulnscope.evaluate.robust import RobustAccuracyCurve, robust_accuracy
from vulnscope.evaluate.standard import (
    StandardEvaluation,
    StandardEvaluationCurve,
    merge_cascade_chunks,
    standard_evaluation,
    standard_evaluation_curve,
)
from vulnscope.evaluate.transfer import (
    HalvesTransfer,
    Transfer,
    transfer_between_halves,
    transferability,
)

__all__ = [
    "CASCADE_ATTACKS",
    "DEFAULT_CASCADE",
    "CascadeBudget",
    "CascadeChunk",
    "HalvesTransfer",
    "MaskingCheck",
    "MaskingSymptoms",
    "MinimalChunk",
    "MinimalPerturbations",
    "RobustAccuracyCurve",
    "StandardEvaluation",
    "StandardEvaluationCurve",
    "Transfer",
    "accuracy",
    "adaptive_chunk",
    "adaptive_evaluation",
    "adaptive_evaluation_curve",
    "cascade_chunk",
    "check_cascade",
    "merge_cascade_chunks",
    "merge_minimal_chunks",
    "minimal_chunk",
    "minimal_perturbations",
    "plot_minimal_perturbations",
    "predict",
    "robust_accuracy",
    "standard_evaluation",
    "standard_evaluation_curve",
    "transfer_between_halves",
    "transferability",
]
