"""vulnscope: how easily can small changes to a classifier's input be turned against it.

Subpackages:
    attacks: FGSM, BIM, PGD, APGD and the Fisher attack on one attack contract.
    diagnostics: input Fisher, input-Hessian curvature, layer amplification, boundary
        sections, for any differentiable classifier.
    evaluate: clean accuracy and robust-accuracy curves.
    data: the embedded 8x8 digits, IDX and ``.npz`` loaders.
    models: reference digits models, training, the weight cache, safe model loading.
    perturbations: spatial transformations, flow fields, random and semi-random noise,
        occlusion, and verified manipulation sets: perturbations beyond the Lp ball.
    rbm: deep networks of stacked RBMs, their passes and training.
    rg: the renormalisation-group analysis of a deep RBM network.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vulnscope")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
