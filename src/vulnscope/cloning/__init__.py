"""Protection against cloning: extraction attacks, output poisoning, and the measurement.

Kenway (2018b), "Protection against Cloning for Deep Learning": an attacker who can query
a classifier trains a clone, finds its weaknesses and crafts adversarial inputs that
transfer back. The defence poisons each published output so that a clone comes out wrong
while every legitimate user still gets the same class.

- The attacker: :class:`BlackBox` (the only access, with a query budget),
  :func:`extract` (natural queries or Jacobian-based augmentation, Papernot et al.
  2017) and :func:`measure_clone` (accuracy, agreement, transfer rate).
- The defences, each wrapping a model and publishing poisoned probability vectors:
  :class:`FisherPoisoning` (Kenway's, steered by a :class:`ReverseModel`: a deep RBM's
  own generation pass, :class:`GenerationPassFisher`, or a :class:`ConditionalDecoder`
  the defender fits for any other classifier), :class:`MAD` (Orekondy et al. 2020),
  :class:`ReverseSigmoid` (Lee et al. 2019), and the baselines :class:`RandomPoisoning`,
  :class:`Rounding` and :class:`LabelOnly`.
- The measurement: :func:`clone_study` and the ``vulnscope clone`` job (:func:`run_clone`).
"""

from vulnscope.cloning.decoder import ConditionalDecoder
from vulnscope.cloning.defence import OutputDefence, Published, Undefended
from vulnscope.cloning.extraction import CloneMeasurement, Extraction, extract, measure_clone
from vulnscope.cloning.fisher_poisoning import FisherPoisoning
from vulnscope.cloning.generation_fisher import (
    GenerationPassFisher,
    GenerationRG,
    exact_generation_chain_fisher,
    exact_generation_fisher,
)
from vulnscope.cloning.job import run_clone
from vulnscope.cloning.label_only import LabelOnly
from vulnscope.cloning.mad import MAD
from vulnscope.cloning.oracle import BlackBox, QueryBudgetExceededError
from vulnscope.cloning.random_poisoning import RandomPoisoning
from vulnscope.cloning.rbm_clone import DeepRBMCloneTrainer
from vulnscope.cloning.reverse import MemoizedReverse, ReverseModel
from vulnscope.cloning.reverse_sigmoid import ReverseSigmoid
from vulnscope.cloning.rounding import Rounding
from vulnscope.cloning.study import CloneStudySettings, Victim, clone_study

__all__ = [
    "MAD",
    "BlackBox",
    "CloneMeasurement",
    "CloneStudySettings",
    "ConditionalDecoder",
    "DeepRBMCloneTrainer",
    "Extraction",
    "FisherPoisoning",
    "GenerationPassFisher",
    "GenerationRG",
    "LabelOnly",
    "MemoizedReverse",
    "OutputDefence",
    "Published",
    "QueryBudgetExceededError",
    "RandomPoisoning",
    "ReverseModel",
    "ReverseSigmoid",
    "Rounding",
    "Undefended",
    "Victim",
    "clone_study",
    "exact_generation_chain_fisher",
    "exact_generation_fisher",
    "extract",
    "measure_clone",
    "run_clone",
]
