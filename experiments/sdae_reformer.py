"""A stacked denoising autoencoder as a reformer, against an oblivious and a white-box attacker.

Run:  OMP_NUM_THREADS=1 VULNSCOPE_CACHE_DIR=/tmp/vcache python experiments/sdae_reformer.py

The model is the one ``vulnscope defend --method sdae-reformer`` writes
(:func:`vulnscope.defences.digits.defend_digits`): the reference digits CNN behind a
stacked denoising autoencoder (Vincent et al. 2010, :data:`SDAE_REFORMER`), the use Meng
and Chen's (2017) reformer makes of an autoencoder. On the 397 test digits at L∞ 0.1:

- the oblivious attacker (Meng and Chen's setting): APGD-CE against the bare CNN, its
  examples then given to the pipeline;
- the white-box attacker: the standard cascade against the whole pipeline (what
  ``vulnscope audit --model FILE --evaluation standard`` runs), which sees the
  autoencoder and differentiates through it.

Prints the clean and robust accuracies; a few seconds of training, about a minute in all.
"""

from __future__ import annotations

import torch

from vulnscope.attacks import APGD
from vulnscope.data import load_digits
from vulnscope.defences.digits import SDAE_REFORMER, defend_digits
from vulnscope.defences.sdae import Reformer
from vulnscope.evaluate import standard_evaluation

EPS = 0.1


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of ``x`` that ``model`` classifies as ``y``."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def main() -> None:
    """Train the pipeline and print the three accuracies of each model."""
    torch.set_num_threads(1)
    test = load_digits("test")
    pipeline = defend_digits("sdae-reformer", seed=0).model
    assert isinstance(pipeline, Reformer)
    classifier = pipeline.classifier
    oblivious = APGD(norm="linf", eps=EPS, loss="ce", seed=0)(classifier, test.x, test.y)
    bare = standard_evaluation(classifier, test.x, test.y, norm="linf", eps=EPS, seed=0)
    whole = standard_evaluation(pipeline, test.x, test.y, norm="linf", eps=EPS, seed=0)
    print(f"SDAE {SDAE_REFORMER}; L∞ {EPS}; {test.x.shape[0]} test digits")
    print("| model | clean | oblivious APGD-CE (made on the CNN) | white-box standard cascade |")
    print("|---|---|---|---|")
    print(
        f"| CNN | {accuracy(classifier, test.x, test.y):.1%} "
        f"| {accuracy(classifier, oblivious.x_adv, test.y):.1%} | {bare.robust_accuracy:.1%} |"
    )
    print(
        f"| CNN behind the SDAE | {accuracy(pipeline, test.x, test.y):.1%} "
        f"| {accuracy(pipeline, oblivious.x_adv, test.y):.1%} | {whole.robust_accuracy:.1%} |"
    )


if __name__ == "__main__":
    main()
