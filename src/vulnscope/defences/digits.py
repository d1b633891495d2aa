"""Defended versions of the reference digits CNN: what ``vulnscope defend`` trains.

Each method trains :class:`vulnscope.models.DigitsCNN` on the digits training split with
the reference recipe (:data:`vulnscope.models.PRETRAINED`: Adam, the same epochs, batch
size and learning rate), changing only what the defence changes: the objective, an
after-step constraint, the labels (distillation) or a filter in front (MagNet, a stacked
denoising autoencoder's reformer). The
result is an ordinary ``nn.Module`` in eval mode that TorchScript can save, so
``vulnscope audit --model FILE`` attacks it like any other model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vulnscope._threads import fixed_threads
from vulnscope._validation import check_choice, check_int, check_real, check_seed
from vulnscope.defences.adversarial_training import fast_fgsm_training, pgd_training
from vulnscope.defences.cure import CURE
from vulnscope.defences.distillation import defensive_distillation
from vulnscope.defences.dropout import activation_dropout
from vulnscope.defences.magnet import DigitsAutoencoder, fit_magnet, train_autoencoder
from vulnscope.defences.mixup import ManifoldMixup
from vulnscope.defences.parseval import parseval_retraction
from vulnscope.defences.provable_training import (
    ProvableTraining,
    crown_ibp_training,
    ibp_training,
    wong_kolter_training,
)
from vulnscope.defences.sdae import Reformer
from vulnscope.defences.sdae_training import train_sdae
from vulnscope.defences.trades import TRADES
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.cache import PRETRAINED
from vulnscope.models.digits import DigitsCNN
from vulnscope.models.seeded import build_seeded
from vulnscope.models.training import Objective, train_classifier

__all__ = [
    "DEFENCE_METHODS",
    "MAGNET_FPR",
    "MAGNET_VALIDATION",
    "PROVABLE_EPOCHS",
    "PROVABLE_SCHEDULE",
    "PROVABLE_TRAINING",
    "PROVABLE_TRAIN_EPS",
    "SDAE_EPOCHS",
    "SDAE_REFORMER",
    "DefendedModel",
    "defence_settings",
    "defend_digits",
]

DEFENCE_METHODS = (
    "none",
    "pgd",
    "fgsm",
    "trades",
    "distill",
    "cure",
    "parseval",
    "mixup",
    "magnet",
    "sdae-reformer",
    "ibp",
    "crown-ibp",
    "wong-kolter",
)
"""Methods of :func:`defend_digits` (``"none"``: the reference recipe, for comparison)."""

PROVABLE_TRAINING: dict[str, Callable[..., ProvableTraining]] = {
    "ibp": ibp_training,
    "crown-ibp": crown_ibp_training,
    "wong-kolter": wong_kolter_training,
}
"""The provable-training methods of :func:`defend_digits` and their objectives."""

PROVABLE_TRAIN_EPS = 1.5
"""Provable training ramps eps to this multiple of the radius it is to certify (Gowal et
al. and Zhang et al. also train on MNIST at a larger eps than they test): at L∞ 0.1 on
the digits test split, IBP trained to 0.15 certified more than trained to 0.1, 0.12 or 0.2."""

PROVABLE_EPOCHS = {"ibp": 200, "crown-ibp": 200, "wong-kolter": 20}
"""Default epochs of provable training. IBP's certified accuracy at L∞ 0.1 still grows
well past the reference recipe's 30 epochs (74% at 30, 86% at 100, 88% at 200;
``benchmarks/provable_training.py``), at about 0.5 s an epoch. The dual of Wong and Kolter
bounds every neuron of the CNN, several minutes an epoch on one CPU thread: it keeps the
20 epochs of the authors' code."""

PROVABLE_SCHEDULE = (0.1, 0.5)
"""Provable training's warm-up and ramp, as fractions of the epochs: eps stays 0 for the
first tenth, then grows linearly over half the training, and stays at its target for the
last 40% (the shape of Gowal et al.'s and Zhang et al.'s schedules; a quicker ramp, 5%
then 30%, certified as much at 100 epochs)."""

MAGNET_VALIDATION = 400
"""The last training images, held out to fit MagNet's detector thresholds."""

MAGNET_FPR = 0.02
"""MagNet's total false-positive rate on the held-out images, split over its 4 detectors."""

AUTOENCODER_EPOCHS = 100
"""Epochs of MagNet's autoencoder with the default recipe (another ``epochs`` is used as is)."""

SDAE_REFORMER = {"sizes": [64, 128, 64], "corruption": "masking", "level": 0.25, "lr": 1e-2}
"""The stacked denoising autoencoder of ``"sdae-reformer"`` (Vincent et al. 2010): two
sigmoid layers, masking noise 0.25, Adam; 20 epochs per layer and 20 of fine-tuning with
the default recipe (another ``epochs`` is used as is), on every training image."""

SDAE_EPOCHS = 20


@dataclass(frozen=True)
class DefendedModel:
    """A defended digits model and how it was made.

    Attributes:
        model: the defended classifier, eval mode, (N, 1, 8, 8) -> (N, 10) logits.
        method: one of :data:`DEFENCE_METHODS`.
        settings: every setting that shaped it (JSON-ready).

    """

    model: nn.Module
    method: str
    settings: dict[str, Any] = field(default_factory=dict)


def defend_digits(
    method: str,
    *,
    eps: float = 0.1,
    epochs: int | None = None,
    dropout: float = 0.0,
    temperature: float = 100.0,
    beta: float = 6.0,
    cure_h: float = 0.5,
    cure_gamma: float = 4.0,
    parseval_beta: float = 0.01,
    mixup_alpha: float = 2.0,
    seed: int = 0,
) -> DefendedModel:
    """Train the digits CNN with one defence.

    Args:
        method: ``"pgd"`` (Madry et al. 2018, 10 steps), ``"fgsm"`` (fast FGSM training,
            Wong et al. 2020), ``"trades"`` (Zhang et al. 2019), ``"distill"``
            (Papernot et al. 2016), ``"cure"`` (Moosavi-Dezfooli et al. 2019),
            ``"parseval"`` (Cissé et al. 2017), ``"mixup"`` (Manifold Mixup, Verma et al.
            2019), ``"magnet"`` (Meng and Chen 2017), ``"sdae-reformer"`` (the
            classifier behind a stacked denoising autoencoder, Vincent et al. 2010; the
            whole pipeline is what the audit attacks), provable training: ``"ibp"``
            (Gowal et al. 2018), ``"crown-ibp"`` (Zhang et al. 2020), ``"wong-kolter"``
            (Wong and Kolter 2018; slow on the CNN: its dual bounds every neuron), or
            ``"none"``.
        eps: L∞ radius of the adversarial and provable training methods (pgd, fgsm,
            trades; ibp, crown-ibp and wong-kolter ramp to :data:`PROVABLE_TRAIN_EPS`
            times it, see :data:`PROVABLE_SCHEDULE`).
        epochs: training epochs (default: the reference recipe's 30;
            :data:`PROVABLE_EPOCHS` for provable training).
        dropout: dropout on every activation during training (any method), in [0, 1).
        temperature: distillation temperature T.
        beta: TRADES' trade-off weight.
        cure_h: CURE's finite-difference step.
        cure_gamma: CURE's penalty weight.
        parseval_beta: the Parseval retraction's step (the paper's 0.0003 is made for SGD
            and barely constrains a network trained with Adam).
        mixup_alpha: Manifold Mixup's Beta(α, α).
        seed: seed of the initialisation, the minibatches and every random draw.

    Returns:
        :class:`DefendedModel`.

    """
    from vulnscope.data.digits import load_digits  # the data package imports scikit-learn

    settings = defence_settings(
        method,
        eps=eps,
        epochs=epochs,
        dropout=dropout,
        temperature=temperature,
        beta=beta,
        cure_h=cure_h,
        cure_gamma=cure_gamma,
        parseval_beta=parseval_beta,
        mixup_alpha=mixup_alpha,
        seed=seed,
    )
    method = check_choice(method, "method", DEFENCE_METHODS)
    epochs, dropout, seed = settings["epochs"], settings["dropout"], settings["seed"]
    recipe = PRETRAINED["digits-cnn"][1]
    train = load_digits("train")
    x, y = train.x, train.y
    objective: Objective | None = None
    after_step = None
    if method == "pgd":
        objective = pgd_training(settings["eps"])
    elif method == "fgsm":
        objective = fast_fgsm_training(settings["eps"])
    elif method == "trades":
        objective = TRADES(eps=settings["eps"], beta=beta)
    elif method == "cure":
        objective = CURE(h=cure_h, gamma=cure_gamma)
    elif method == "parseval":

        def after_step(model: nn.Module) -> None:
            parseval_retraction(model, beta=settings["parseval_beta"])

    elif method == "mixup":
        objective = ManifoldMixup(alpha=mixup_alpha)
    elif method == "magnet":
        x, y = train.x[:-MAGNET_VALIDATION], train.y[:-MAGNET_VALIDATION]
    elif method in PROVABLE_TRAINING:
        objective = PROVABLE_TRAINING[method](
            settings["train_eps"], warmup=settings["warmup"], ramp=settings["ramp"]
        )
    generator = torch.Generator().manual_seed(seed ^ 0xD20)

    # on one intra-op thread, as the reference recipe: the same weights on any machine
    with fixed_threads():
        if method == "distill":
            distilled = defensive_distillation(
                DigitsCNN,
                x,
                y,
                temperature=temperature,
                epochs=epochs,
                batch_size=recipe.batch_size,
                lr=recipe.lr,
                seed=seed,
            )
            return DefendedModel(distilled.student, method, settings)
        classifier = build_seeded(DigitsCNN, seed)
        with activation_dropout(classifier, dropout, generator):
            train_classifier(
                classifier,
                x,
                y,
                epochs=epochs,
                batch_size=recipe.batch_size,
                lr=recipe.lr,
                weight_decay=recipe.weight_decay,
                seed=seed,
                objective=objective,
                after_step=after_step,
            )
        if method == "sdae-reformer":
            sdae = train_sdae(
                train.x,
                sizes=settings["sizes"],
                corruption=settings["corruption"],
                level=settings["level"],
                epochs=settings["sdae_epochs"],
                finetune_epochs=settings["sdae_epochs"],
                lr=settings["sdae_lr"],
                seed=seed,
            )
            return DefendedModel(Reformer(classifier, sdae).eval(), method, settings)
        if method != "magnet":
            return DefendedModel(classifier, method, settings)
        autoencoder = train_autoencoder(
            DigitsAutoencoder(channels=16, seed=seed),
            x,
            noise=0.1,
            epochs=settings["autoencoder_epochs"],
            lr=1e-2,
            seed=seed,
        )
        magnet = fit_magnet(classifier, autoencoder, train.x[-MAGNET_VALIDATION:], fpr=MAGNET_FPR)
        return DefendedModel(magnet, method, settings)


def defence_settings(
    method: str,
    *,
    eps: float = 0.1,
    epochs: int | None = None,
    dropout: float = 0.0,
    temperature: float = 100.0,
    beta: float = 6.0,
    cure_h: float = 0.5,
    cure_gamma: float = 4.0,
    parseval_beta: float = 0.01,
    mixup_alpha: float = 2.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every setting that shapes :func:`defend_digits`' model, checked, before any training.

    The record :attr:`DefendedModel.settings` holds (the arguments are those of
    :func:`defend_digits`): what ``vulnscope defend`` compares with the model file it
    would replace.
    """
    method = check_choice(method, "method", DEFENCE_METHODS)
    seed = check_seed(seed) or 0
    recipe = PRETRAINED["digits-cnn"][1]
    if epochs is None:
        epochs = PROVABLE_EPOCHS.get(method, recipe.epochs)
    epochs = check_int(epochs, "epochs")
    dropout = check_real(dropout, "dropout", minimum=0.0)
    if dropout >= 1.0:
        raise InvalidArgumentError(f"dropout must be in [0, 1), got {dropout}")
    if method == "distill" and dropout > 0.0:
        raise InvalidArgumentError("dropout is not an option of method 'distill'")
    if method in PROVABLE_TRAINING and dropout > 0.0:  # the bounds ignore it
        raise InvalidArgumentError(f"dropout is not an option of method {method!r}")
    eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
    settings: dict[str, Any] = {
        "epochs": epochs,
        "dropout": dropout,
        "seed": seed,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
    }
    if method in ("pgd", "fgsm", "trades"):
        settings["eps"] = eps
    if method == "pgd":
        settings["steps"] = 10
    elif method == "trades":
        settings["beta"] = beta
    elif method == "cure":
        settings.update(h=cure_h, gamma=cure_gamma)
    elif method == "parseval":
        parseval_beta = check_real(parseval_beta, "parseval_beta", minimum=0.0, exclusive=True)
        if parseval_beta >= 1.0:
            raise InvalidArgumentError(f"parseval_beta must be in (0, 1), got {parseval_beta}")
        settings["parseval_beta"] = parseval_beta
    elif method == "mixup":
        settings["alpha"] = mixup_alpha
    elif method == "distill":
        settings["temperature"] = temperature
    elif method in PROVABLE_TRAINING:
        warmup, ramp = PROVABLE_SCHEDULE
        settings.update(
            eps=eps, train_eps=PROVABLE_TRAIN_EPS * eps, warmup=warmup * epochs, ramp=ramp * epochs
        )
    elif method == "sdae-reformer":
        settings.update(
            sizes=SDAE_REFORMER["sizes"],
            corruption=SDAE_REFORMER["corruption"],
            level=SDAE_REFORMER["level"],
            sdae_lr=SDAE_REFORMER["lr"],
            sdae_epochs=SDAE_EPOCHS if epochs == recipe.epochs else epochs,
        )
    elif method == "magnet":
        settings.update(
            validation_images=MAGNET_VALIDATION,
            fpr=MAGNET_FPR,
            autoencoder_epochs=AUTOENCODER_EPOCHS if epochs == recipe.epochs else epochs,
        )
    return settings
