"""Deep networks of restricted Boltzmann machines (Kenway 2018).

A binary RBM (:class:`RBM`), a classifier of stacked RBMs with a softmax label layer
(:class:`DeepRBM`) and its sampled, exact and mean-field passes, and training: greedy
layerwise contrastive divergence, discriminative fine-tuning, and the layerwise
objective of Kenway's eq. 14.
"""

from vulnscope.rbm.exact import MAX_EXACT_WIDTH, binary_states, push_forward
from vulnscope.rbm.network import Chains, DeepRBM
from vulnscope.rbm.rbm import RBM

__all__ = ["MAX_EXACT_WIDTH", "RBM", "Chains", "DeepRBM", "binary_states", "push_forward"]
