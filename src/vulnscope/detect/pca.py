r"""Two detectors on the principal components of the clean inputs.

- :class:`PCAStatistics`, Hendrycks and Gimpel (2017), "Early methods for detecting
  adversarial images": adversarial images put abnormally much energy on the *last*
  principal components of the clean data, directions natural images hardly use. The
  score is the mean squared coefficient of the input on the ``tail`` lowest-variance
  components.
- :class:`PCAReduced`, Bhagoji, Cullina and Mittal (2017), "Dimensionality reduction as
  a defense against evasion attacks on machine learning classifiers": a classifier
  trained on the inputs projected on the top ``components`` principal components ignores
  most of what a perturbation changes. As a detector, the score is how much the reduced
  classifier disagrees with the original one.

Carlini and Wagner (2017) note that on MNIST the last components are mostly the border
pixels, which are zero in every clean image: the 8×8 digits share that property.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_int, check_real
from vulnscope.detect.base import Detector
from vulnscope.errors import InvalidArgumentError

__all__ = ["PCAReduced", "PCAStatistics", "principal_components"]

Model = Callable[[Tensor], Tensor]


def principal_components(x: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and the principal directions of the rows of ``x``.

    Args:
        x: (N, D) data.

    Returns:
        ``mean`` (D,) and ``components`` (min(N, D), D): orthonormal rows, in decreasing
        order of the variance of the data along them (computed in float64).

    """
    data = x.double()
    mean = data.mean(0)
    _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)
    return mean.to(x.dtype), vh.to(x.dtype)


def _check_dimension(value: int, name: str, dimension: int) -> None:
    if value > dimension:
        raise InvalidArgumentError(
            f"{name} must be at most the inputs' dimension {dimension}, got {value}"
        )


class PCAStatistics(Detector):
    r"""Hendrycks and Gimpel's PCA detector: energy on the last principal components.

    With the clean training inputs' mean :math:`\mu` and principal directions
    :math:`v_1, \dots, v_D` (decreasing variance), an input :math:`x` scores

    .. math:: s(x) = \frac{1}{t} \sum_{i = D - t + 1}^{D} \big(v_i^\top (x - \mu)\big)^2,

    the mean squared coefficient on the ``t = tail`` last components (the paper looks at
    the variance of those coefficients; their mean is near zero on clean data, so the two
    agree there). Differentiable; no training beyond the PCA.

    Args:
        tail: number of lowest-variance components scored (at most the input dimension).

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,).

    """

    name = "pca-statistics"
    paper = "Hendrycks and Gimpel (2017), Early methods for detecting adversarial images"
    mean_: Tensor
    tail_: Tensor

    def __init__(self, *, tail: int = 32) -> None:
        super().__init__()
        self.tail = check_int(tail, "tail")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The clean mean (D,) and the ``tail`` last principal directions (tail, D)."""
        dimension = math.prod(input_shape)
        _check_dimension(self.tail, "tail", dimension)
        self.register_buffer("mean_", torch.zeros(dimension))
        self.register_buffer("tail_", torch.zeros(self.tail, dimension))

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """PCA of the clean inputs (needs at least as many inputs as dimensions)."""
        flat = x.flatten(1)
        if flat.shape[0] < flat.shape[1]:
            raise InvalidArgumentError(
                f"inputs: the PCA of {flat.shape[1]}-dimensional inputs needs at least "
                f"{flat.shape[1]} of them, got {flat.shape[0]}"
            )
        mean, components = principal_components(flat)
        self.mean_.copy_(mean)
        self.tail_.copy_(components[-self.tail :])

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """Mean squared coefficient on the last ``tail`` components."""
        coefficients = (x.flatten(1) - self.mean_) @ self.tail_.T
        return coefficients.square().mean(1)


class PCAReduced(Detector):
    r"""Bhagoji et al.'s reduced classifier as a detector: disagreement with the original.

    A small classifier (one hidden ReLU layer) is trained on the clean inputs' coefficients
    on their top ``components`` principal directions. With the original classifier's
    softmax :math:`p` and the reduced one's :math:`q`, the score is

    .. math:: s(x) = 1 - \sum_c p_c(x)\, q_c(x),

    the probability that the two classifiers disagree when each draws a class from its
    own softmax. Chosen over :math:`1 - q_{\arg\max p}(x)` because it is differentiable
    through *both* networks everywhere (the argmax is not), so a perfect-knowledge
    attacker gets the full gradient; for a confident original classifier the two agree.

    Args:
        components: principal directions kept (``k``; the paper varies it, 16 suits the
            64-pixel digits).
        hidden: width of the reduced classifier's hidden layer.
        epochs: passes of Adam over the training inputs.
        batch_size: inputs per step.
        lr: Adam's learning rate.

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,) in [0, 1].

    """

    name = "pca-reduced"
    paper = "Bhagoji, Cullina and Mittal (2017), Dimensionality reduction as a defense"
    mean_: Tensor
    top_: Tensor
    reduced_: nn.Sequential

    def __init__(
        self,
        *,
        components: int = 16,
        hidden: int = 64,
        epochs: int = 40,
        batch_size: int = 64,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.components = check_int(components, "components")
        self.hidden = check_int(hidden, "hidden")
        self.epochs = check_int(epochs, "epochs")
        self.batch_size = check_int(batch_size, "batch_size")
        self.lr = check_real(lr, "lr", minimum=0.0, exclusive=True)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """The clean mean, the top directions (k, D) and the reduced classifier."""
        dimension = math.prod(input_shape)
        _check_dimension(self.components, "components", dimension)
        self.register_buffer("mean_", torch.zeros(dimension))
        self.register_buffer("top_", torch.zeros(self.components, dimension))
        # the initial weights are drawn again from the fit's generator
        with torch.random.fork_rng(devices=[]):
            self.reduced_ = nn.Sequential(
                OrderedDict(
                    hidden=nn.Linear(self.components, self.hidden),
                    relu=nn.ReLU(),
                    logits=nn.Linear(self.hidden, num_classes),
                )
            )

    def reduce(self, x: Tensor) -> Tensor:
        """(N, k) coefficients of ``x`` on the top directions."""
        return (x.flatten(1) - self.mean_) @ self.top_.T

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """PCA of the clean inputs, then the reduced classifier trained on their labels."""
        mean, directions = principal_components(x.flatten(1))
        if directions.shape[0] < self.components:
            raise InvalidArgumentError(
                f"inputs: {self.components} principal components need at least "
                f"{self.components} inputs, got {x.shape[0]}"
            )
        self.mean_.copy_(mean)
        self.top_.copy_(directions[: self.components])
        with torch.no_grad():
            for layer in self.reduced_.modules():
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)
        features = self.reduce(x).detach()
        optimizer = torch.optim.Adam(self.reduced_.parameters(), lr=self.lr)
        self.reduced_.train()
        for _ in range(self.epochs):
            order = torch.randperm(x.shape[0], generator=generator, device=x.device)
            for start in range(0, x.shape[0], self.batch_size):
                batch = order[start : start + self.batch_size]
                loss = F.cross_entropy(self.reduced_(features[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.reduced_.eval()

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """One minus the agreement of the two softmax outputs."""
        original = torch.softmax(model(x), dim=1)
        reduced = torch.softmax(self.reduced_(self.reduce(x)), dim=1)
        return 1.0 - (original * reduced).sum(1)
