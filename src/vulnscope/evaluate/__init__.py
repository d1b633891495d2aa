"""Clean accuracy, robust curves, the standard cascade, minimal perturbations, transfer."""

from vulnscope.evaluate.accuracy import accuracy, predict
from vulnscope.evaluate.masking import MaskingCheck
from vulnscope.evaluate.minimal import MinimalPerturbations, minimal_perturbations
from vulnscope.evaluate.plots import plot_minimal_perturbations
from vulnscope.evaluate.robust import RobustAccuracyCurve, robust_accuracy
from vulnscope.evaluate.standard import (
    CASCADE_ATTACKS,
    DEFAULT_CASCADE,
    StandardEvaluation,
    StandardEvaluationCurve,
    check_cascade,
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
    "HalvesTransfer",
    "MaskingCheck",
    "MinimalPerturbations",
    "RobustAccuracyCurve",
    "StandardEvaluation",
    "StandardEvaluationCurve",
    "Transfer",
    "accuracy",
    "check_cascade",
    "minimal_perturbations",
    "plot_minimal_perturbations",
    "predict",
    "robust_accuracy",
    "standard_evaluation",
    "standard_evaluation_curve",
    "transfer_between_halves",
    "transferability",
]
