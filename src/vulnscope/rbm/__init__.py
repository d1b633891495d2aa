"""Deep networks of restricted Boltzmann machines (Kenway 2018).

A binary RBM (:class:`RBM`), a classifier of stacked RBMs with a softmax label layer
(:class:`DeepRBM`) and its sampled, exact and mean-field passes, training (greedy
layerwise contrastive divergence, discriminative fine-tuning, and the layerwise
objective of Kenway's eq. 14), safetensors files, and cached digits networks.
"""

from vulnscope.rbm.exact import MAX_EXACT_WIDTH, binary_states, push_forward
from vulnscope.rbm.layerwise import train_layerwise_kl
from vulnscope.rbm.network import Chains, DeepRBM
from vulnscope.rbm.pretrained import binarized_digits, pretrained_deep_rbm
from vulnscope.rbm.rbm import RBM
from vulnscope.rbm.serialization import load_deep_rbm, save_deep_rbm
from vulnscope.rbm.training import fine_tune, fit_readout, greedy_pretrain, train_rbm

__all__ = [
    "MAX_EXACT_WIDTH",
    "RBM",
    "Chains",
    "DeepRBM",
    "binarized_digits",
    "binary_states",
    "fine_tune",
    "fit_readout",
    "greedy_pretrain",
    "load_deep_rbm",
    "pretrained_deep_rbm",
    "push_forward",
    "save_deep_rbm",
    "train_layerwise_kl",
    "train_rbm",
]
