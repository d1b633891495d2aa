"""Defences: training objectives, constraints and input filters that harden a classifier.

Training-time defences are objectives or after-step hooks for
:func:`vulnscope.models.train_classifier`; each is judged by attacks that adapt to it
(the standard cascade of :mod:`vulnscope.evaluate`, and for MagNet an attacker on the
whole pipeline).
"""

from vulnscope.defences.adversarial_training import (
    AdversarialTraining,
    fast_fgsm_training,
    pgd_training,
)
from vulnscope.defences.cure import CURE, curvature_penalty
from vulnscope.defences.distillation import (
    DistilledModels,
    Tempered,
    defensive_distillation,
    soft_labels,
)
from vulnscope.defences.dropout import ACTIVATION_TYPES, activation_dropout
from vulnscope.defences.magnet import (
    DigitsAutoencoder,
    MagNet,
    fit_magnet,
    fit_threshold,
    jensen_shannon,
    reconstruction_error,
    train_autoencoder,
)
from vulnscope.defences.magnet_evaluation import (
    AdaptiveMagNetAttack,
    AdaptiveResult,
    MagNetEvaluation,
    evaluate_adaptive,
    evaluate_oblivious,
)
from vulnscope.defences.mixup import ManifoldMixup, MixupDraw
from vulnscope.defences.parseval import ConvexAggregation, parseval_deviation, parseval_retraction
from vulnscope.defences.provable_training import (
    PROVABLE_METHODS,
    ProvableTraining,
    RampSchedule,
    ScheduleValues,
    crown_ibp_training,
    ibp_training,
    robust_cross_entropy,
    wong_kolter_training,
    worst_case_logits,
)
from vulnscope.defences.sdae import (
    Reformer,
    StackedDenoisingAutoencoder,
    corrupt,
    denoising_loss,
    reconstruction_loss,
)
from vulnscope.defences.sdae_training import fit_sdae, sdae_classifier, train_sdae
from vulnscope.defences.trades import TRADES, trades_loss

__all__ = [
    "ACTIVATION_TYPES",
    "CURE",
    "PROVABLE_METHODS",
    "TRADES",
    "AdaptiveMagNetAttack",
    "AdaptiveResult",
    "AdversarialTraining",
    "ConvexAggregation",
    "DigitsAutoencoder",
    "DistilledModels",
    "MagNet",
    "MagNetEvaluation",
    "ManifoldMixup",
    "MixupDraw",
    "ProvableTraining",
    "RampSchedule",
    "Reformer",
    "ScheduleValues",
    "StackedDenoisingAutoencoder",
    "Tempered",
    "activation_dropout",
    "corrupt",
    "crown_ibp_training",
    "curvature_penalty",
    "defensive_distillation",
    "denoising_loss",
    "evaluate_adaptive",
    "evaluate_oblivious",
    "fast_fgsm_training",
    "fit_magnet",
    "fit_sdae",
    "fit_threshold",
    "ibp_training",
    "jensen_shannon",
    "parseval_deviation",
    "parseval_retraction",
    "pgd_training",
    "reconstruction_error",
    "reconstruction_loss",
    "robust_cross_entropy",
    "sdae_classifier",
    "soft_labels",
    "trades_loss",
    "train_autoencoder",
    "train_sdae",
    "wong_kolter_training",
    "worst_case_logits",
]
