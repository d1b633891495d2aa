"""Adversarial attacks on any PyTorch classifier, all on one contract.

Every attack is a class whose keyword-only constructor takes its hyperparameters and
whose call ``attack(model, x, y, target=None)`` returns an :class:`AttackResult`. The
base class :class:`Attack` owns validation, the model's state, projection and scoring.

>>> from vulnscope.attacks import PGD
>>> attack = PGD(norm="linf", eps=0.1, steps=40, step_size=0.01, random_start=False)
"""

from vulnscope.attacks.apgd import APGD
from vulnscope.attacks.base import Attack, AttackResult
from vulnscope.attacks.bim import BIM
from vulnscope.attacks.carlini_wagner import CarliniWagner
from vulnscope.attacks.deepfool import DeepFool
from vulnscope.attacks.fab import FAB
from vulnscope.attacks.fgsm import FGSM
from vulnscope.attacks.fisher import FisherAttack
from vulnscope.attacks.jsma import JSMA
from vulnscope.attacks.lbfgs import LBFGS
from vulnscope.attacks.pgd import PGD
from vulnscope.attacks.square import Square
from vulnscope.attacks.stadv import StAdv
from vulnscope.attacks.universal import UniversalPerturbation

__all__ = [
    "APGD",
    "BIM",
    "FAB",
    "FGSM",
    "JSMA",
    "LBFGS",
    "PGD",
    "Attack",
    "AttackResult",
    "CarliniWagner",
    "DeepFool",
    "FisherAttack",
    "Square",
    "StAdv",
    "UniversalPerturbation",
]
