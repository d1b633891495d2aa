"""How an attacker trains a deep-RBM clone on the outputs a victim publishes.

Kenway (2018b, section III) clones a deep RBM network by its own layerwise training
(eq. 14), fed with the published outputs: the generation pass runs down from each
published vector ``y`` and supplies the targets of every layer. That is where poisoning
along the generation pass's Fisher information is meant to bite. A practical attacker may
instead train the same architecture discriminatively on the published vectors. Both are
offered, each after the greedy contrastive-divergence pretraining that built the victim.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from vulnscope._validation import check_choice, check_int, describe
from vulnscope.errors import InvalidTypeError
from vulnscope.rbm.layerwise import train_layerwise_kl
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.training import fine_tune, greedy_pretrain

__all__ = ["CLONE_METHODS", "DeepRBMCloneTrainer"]

CloneMethod = Literal["fine_tune", "eq14"]
CLONE_METHODS: tuple[str, ...] = ("fine_tune", "eq14")
"""How a deep-RBM clone is trained (see :class:`DeepRBMCloneTrainer`)."""


class DeepRBMCloneTrainer:
    """Train a :class:`DeepRBM` clone on (query, published output) pairs.

    A ``trainer`` for :func:`vulnscope.cloning.extract`: called as
    ``trainer(clone, x, targets, seed)`` with the clone built from the attacker's chosen
    architecture, the queried inputs (S, ...) in [0, 1] and the published probability
    vectors (S, C).

    1. Greedy layerwise CD pretraining (Hinton, Osindero and Teh 2006) of the hidden
       layers on the queries, with the label layer read out from the published vectors.
    2. ``"fine_tune"``: the mean-field pass trained on the soft cross-entropy to the
       published vectors (a discriminative cloner); ``"eq14"``: Kenway's layerwise
       objective (2018b, eq. 14) with the generation pass started from each published
       vector (:func:`vulnscope.rbm.train_layerwise_kl`).

    Args:
        method: ``"fine_tune"`` or ``"eq14"``.
        pretrain_epochs: CD epochs per hidden layer.
        epochs: fine-tuning epochs (``"fine_tune"``).
        sweeps: sweeps over the layers (``"eq14"``).
        epochs_per_layer: epochs per layer and sweep (``"eq14"``).

    Example:
        >>> import torch
        >>> x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
        >>> targets = torch.softmax(torch.randn(40, 3), -1)
        >>> clone = DeepRBMCloneTrainer(pretrain_epochs=1, epochs=1)(
        ...     DeepRBM([6, 4], 3), x, targets, 0)
        >>> clone.training
        False

    """

    def __init__(
        self,
        *,
        method: CloneMethod = "fine_tune",
        pretrain_epochs: int = 20,
        epochs: int = 30,
        sweeps: int = 2,
        epochs_per_layer: int = 5,
    ) -> None:
        self.method = check_choice(method, "method", CLONE_METHODS)
        self.pretrain_epochs = check_int(pretrain_epochs, "pretrain_epochs")
        self.epochs = check_int(epochs, "epochs")
        self.sweeps = check_int(sweeps, "sweeps")
        self.epochs_per_layer = check_int(epochs_per_layer, "epochs_per_layer")

    def __repr__(self) -> str:
        return (
            f"DeepRBMCloneTrainer(method={self.method!r}, "
            f"pretrain_epochs={self.pretrain_epochs}, epochs={self.epochs}, "
            f"sweeps={self.sweeps}, epochs_per_layer={self.epochs_per_layer})"
        )

    def __call__(self, clone: nn.Module, x: Tensor, targets: Tensor, seed: int) -> DeepRBM:
        """Train ``clone`` in place and return it in eval mode."""
        if not isinstance(clone, DeepRBM):
            raise InvalidTypeError(
                f"clone must be a DeepRBM (DeepRBMCloneTrainer trains deep RBM networks), "
                f"got {describe(clone)}"
            )
        greedy_pretrain(clone, x, targets, epochs=self.pretrain_epochs, seed=seed)
        if self.method == "fine_tune":
            fine_tune(clone, x, targets, method="mean_field", epochs=self.epochs, seed=seed)
        else:
            train_layerwise_kl(
                clone,
                x,
                targets,
                sweeps=self.sweeps,
                epochs_per_layer=self.epochs_per_layer,
                seed=seed,
            )
        return clone.eval()
