r"""Li and Li's cascade on the PCA statistics of the convolutional layers' outputs.

Li and Li (2017), "Adversarial examples detection in deep networks with convolutional
filter statistics": each convolutional layer's output is projected on its principal
components (fitted on clean data), and simple statistics of the normalised coefficients
feed one linear classifier per layer; the classifiers form a cascade, each trained on the
adversarial examples the stages before it let through, and an input is adversarial as
soon as one stage says so.

Simplified here, as Carlini and Wagner (2017) describe it, in three places: each stage is
a logistic regression trained with torch (full batch, Adam, classes weighted equally)
instead of a linear SVM; its statistics are the minimum, quartiles and maximum of the
absolute normalised coefficients on the top ``components`` directions; and the stages'
own thresholds are replaced by one: the score is the largest stage logit, thresholded by
:meth:`~vulnscope.detect.base.Detector.threshold_at` at the clean false-positive rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_choice, check_eps, check_int, check_real, describe
from vulnscope.attacks import FGSM, PGD
from vulnscope.detect.base import Detector
from vulnscope.detect.pca import principal_components
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["ConvCascade", "layer_outputs"]

Model = Callable[[Tensor], Tensor]

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


@contextmanager
def layer_outputs(model: Model, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of ``model``'s submodules ``names`` while the block runs.

    Yields:
        a dict, filled by each forward pass with each named submodule's output.

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module``.
        InvalidArgumentError: a name is not one of its submodules.

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module to read its layers, got {describe(model)}"
        )
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise InvalidArgumentError(
            f"layers: the model has no submodule {missing[0]!r}; its convolutions are "
            f"{[n for n, m in modules.items() if isinstance(m, nn.Conv2d)]}"
        )
    outputs: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            outputs[name] = output

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class _Stage(nn.Module):
    """One layer's PCA, the normalisation of its statistics, and its logistic regression.

    The layer's width is only known from the classifier: the PCA buffers take their
    shapes from the state they are loaded from.
    """

    mean: Tensor
    directions: Tensor
    scale: Tensor
    feature_mean: Tensor
    feature_scale: Tensor

    def __init__(self, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("directions", torch.zeros(components, 0))
        self.register_buffer("scale", torch.ones(components))
        self.register_buffer("feature_mean", torch.zeros(len(_QUANTILES)))
        self.register_buffer("feature_scale", torch.ones(len(_QUANTILES)))
        self.classifier = nn.Linear(len(_QUANTILES), 1)
        self.register_load_state_dict_pre_hook(_take_shapes)

    def fit_pca(self, activations: Tensor) -> None:
        mean, directions = principal_components(activations.flatten(1))
        k = self.directions.shape[0]
        if directions.shape[0] < k:
            raise InvalidArgumentError(
                f"inputs: {k} principal components of a layer need at least {k} inputs, "
                f"got {activations.shape[0]}"
            )
        self.mean, self.directions = mean, directions[:k].contiguous()
        self.scale = self.coefficients(activations).std(0).clamp_min(1e-6)
        raw = self.statistics(activations)
        self.feature_mean, self.feature_scale = raw.mean(0), raw.std(0).clamp_min(1e-6)

    def coefficients(self, activations: Tensor) -> Tensor:
        return (activations.flatten(1) - self.mean) @ self.directions.T

    def statistics(self, activations: Tensor) -> Tensor:
        normalised = (self.coefficients(activations) / self.scale).abs()
        quantiles = torch.tensor(_QUANTILES, dtype=normalised.dtype, device=normalised.device)
        return torch.quantile(normalised, quantiles, dim=1).T

    def forward(self, activations: Tensor) -> Tensor:
        features = (self.statistics(activations) - self.feature_mean) / self.feature_scale
        logits: Tensor = self.classifier(features).squeeze(1)
        return logits


def _take_shapes(module: nn.Module, state: dict[str, Tensor], prefix: str, *_: Any) -> None:
    for key in ("mean", "directions"):
        if prefix + key in state:
            setattr(module, key, torch.empty_like(state[prefix + key]))


class ConvCascade(Detector):
    r"""Li and Li's cascade of linear classifiers on convolutional PCA statistics.

    For each layer :math:`\ell` of ``layers``, the output :math:`h_\ell(x)` is projected
    on its top ``components`` clean principal directions, each coefficient divided by its
    clean standard deviation; the minimum, quartiles and maximum of their absolute values
    (standardised) feed a logistic regression :math:`g_\ell`. Stage :math:`\ell` learns
    clean inputs against the adversarial examples (``attack`` at L-inf ``eps``) that the
    earlier stages score at or below zero (all of them when none is left), and

    .. math:: s(x) = \max_\ell g_\ell\big(h_\ell(x)\big).

    Differentiable almost everywhere (the quantiles sort).

    Args:
        layers: names of the classifier's convolutional submodules, in cascade order.
        components: principal directions kept per layer.
        attack: ``"pgd"`` (10 steps) or ``"fgsm"``, the training attack.
        eps: its L-inf budget.
        epochs: full-batch Adam steps per stage.
        lr: Adam's learning rate.

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,).

    """

    name = "conv-cascade"
    paper = "Li and Li (2017), Adversarial examples detection with convolutional filter statistics"
    stages_: nn.ModuleList

    def __init__(
        self,
        *,
        layers: Sequence[str] = ("conv1", "conv2"),
        components: int = 64,
        attack: str = "pgd",
        eps: float = 0.2,
        epochs: int = 200,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise InvalidArgumentError(
                f"layers must be a non-empty sequence of submodule names, got {describe(layers)}"
            )
        self.layers = [str(name) for name in layers]
        self.components = check_int(components, "components")
        self.attack = check_choice(attack, "attack", ("pgd", "fgsm"))
        self.eps = check_eps(eps, "eps")
        self.epochs = check_int(epochs, "epochs")
        self.lr = check_real(lr, "lr", minimum=0.0, exclusive=True)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """One stage per layer (PCA shapes come with the fit or the file)."""
        with torch.random.fork_rng(devices=[]):
            self.stages_ = nn.ModuleList(_Stage(self.components) for _ in self.layers)

    def activations(self, model: Model, x: Tensor) -> list[Tensor]:
        """The named layers' outputs for ``x``, in cascade order."""
        with layer_outputs(model, self.layers) as outputs:
            model(x)
        return [outputs[name] for name in self.layers]

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """PCA per layer on clean inputs, then the stages in order on clean vs adversarial."""
        seed = int(torch.randint(2**62, (1,), generator=generator))
        method = FGSM(eps=self.eps) if self.attack == "fgsm" else PGD(eps=self.eps, seed=seed)
        adversarial = method(model, x, y).x_adv.detach()
        with torch.no_grad():
            clean = self.activations(model, x)
            attacked = self.activations(model, adversarial)
        remaining = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        stages: list[_Stage] = list(self.stages_)  # type: ignore[arg-type]
        for stage, own, other in zip(stages, clean, attacked, strict=True):
            stage.fit_pca(own)
            with torch.no_grad():
                negatives, positives = stage.statistics(own), stage.statistics(other)
            chosen = remaining if bool(remaining.any()) else torch.ones_like(remaining)
            self._train(stage, negatives, positives[chosen], generator)
            with torch.no_grad():
                remaining &= stage(other) <= 0.0

    def _train(
        self, stage: _Stage, negatives: Tensor, positives: Tensor, generator: torch.Generator
    ) -> None:
        features = torch.cat([negatives, positives])
        features = (features - stage.feature_mean) / stage.feature_scale
        targets = torch.cat([torch.zeros(len(negatives)), torch.ones(len(positives))])
        weights = torch.cat(
            [
                torch.full((len(negatives),), 0.5 / len(negatives)),
                torch.full((len(positives),), 0.5 / len(positives)),
            ]
        ).to(features)
        with torch.no_grad():
            stage.classifier.weight.normal_(0.0, 0.01, generator=generator)
            stage.classifier.bias.zero_()
        optimizer = torch.optim.Adam(stage.classifier.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            logits = stage.classifier(features).squeeze(1)
            loss = (
                weights
                * F.binary_cross_entropy_with_logits(logits, targets.to(logits), reduction="none")
            ).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """The largest stage logit."""
        logits = [
            stage(h) for stage, h in zip(self.stages_, self.activations(model, x), strict=True)
        ]
        return torch.stack(logits).amax(0)
