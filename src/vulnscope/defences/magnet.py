r"""MagNet: detectors that reject inputs far from the data, a reformer that pulls the rest back.

Meng and Chen (2017), "MagNet: a two-pronged defense against adversarial examples". An
autoencoder trained on clean data approximates the data manifold. Two kinds of
*detector* flag an input ``x`` as adversarial:

- reconstruction error: :math:`\|x - \mathrm{AE}(x)\|_p` (``p`` = 1 and 2 in the paper),
  large for inputs far from the manifold;
- probability divergence: the Jensen-Shannon divergence between
  :math:`\operatorname{softmax}(f(x) / T)` and :math:`\operatorname{softmax}(f(\mathrm{AE}(x)) / T)`
  (``T`` = 10 and 40 in the paper), large when reforming changes the classifier's mind.

Each detector's threshold is the clean validation score it exceeds on a fraction
``fpr / D`` of the validation data (``D`` detectors), so the whole detector flags at most
a fraction ``fpr`` of the clean validation inputs. An input that no detector flags is
*reformed*: the classifier sees ``AE(x)`` instead of ``x``.

Carlini and Wagner (2017), "MagNet and 'Efficient defenses against adversarial attacks'
are not robust to adversarial examples", break it with an attacker that knows the whole
pipeline (:mod:`vulnscope.defences.magnet_evaluation`).

Here one autoencoder serves as reformer and as the detectors' autoencoder (the paper
trains one per detector on MNIST and shares one on CIFAR-10).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import (
    check_bool,
    check_inputs,
    check_int,
    check_real,
    check_seed,
    describe,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "DigitsAutoencoder",
    "MagNet",
    "fit_magnet",
    "fit_threshold",
    "jensen_shannon",
    "reconstruction_error",
    "train_autoencoder",
]

logger = logging.getLogger(__name__)

_BOUNDS = (0.0, 1.0)


class DigitsAutoencoder(nn.Module):
    """MagNet's MNIST autoencoder, scaled to (N, 1, 8, 8) digits.

    Meng and Chen (2017), Table 1 (detector I and the reformer): 3x3 convolutions with
    sigmoid activations, ``channels`` wide; 2x2 average pooling between two encoder
    convolutions; nearest-neighbour upsampling between two decoder convolutions; a
    one-channel sigmoid output, so the reconstruction lies in [0, 1]. Without ``pool``
    the pooling and upsampling are left out, as in the paper's detector II: a wider
    bottleneck that reconstructs more faithfully and pulls inputs back less. (The paper
    has 3 channels for 28x28 MNIST; an 8x8 digit pooled to 4x4 needs more.)

    The weights are drawn from ``torch.Generator().manual_seed(seed)`` with PyTorch's
    default distribution for convolutions (uniform on ``±1/sqrt(fan_in)``), so the same
    seed builds the same network without touching the global random state.

    Args:
        channels: width of every hidden convolution.
        pool: halve the resolution between encoder and decoder.
        seed: seed of the initial weights.

    Shape:
        input (N, 1, H, W) in [0, 1], H and W even with ``pool``; output (N, 1, H, W) in [0, 1].

    Example:
        >>> import torch
        >>> ae = DigitsAutoencoder(seed=0)
        >>> tuple(ae(torch.zeros(2, 1, 8, 8)).shape)
        (2, 1, 8, 8)

    """

    def __init__(self, *, channels: int = 16, pool: bool = True, seed: int = 0) -> None:
        super().__init__()
        channels = check_int(channels, "channels")
        pool = check_bool(pool, "pool")
        seed = check_seed(seed) or 0
        # nn.Conv2d draws its default weights from the global generator: give its state back
        with torch.random.fork_rng(devices=[]):
            self.encoder = nn.Sequential(
                OrderedDict(
                    conv1=nn.Conv2d(1, channels, 3, padding=1),
                    act1=nn.Sigmoid(),
                    pool=nn.AvgPool2d(2) if pool else nn.Identity(),
                    conv2=nn.Conv2d(channels, channels, 3, padding=1),
                    act2=nn.Sigmoid(),
                )
            )
            self.decoder = nn.Sequential(
                OrderedDict(
                    conv3=nn.Conv2d(channels, channels, 3, padding=1),
                    act3=nn.Sigmoid(),
                    upsample=nn.Upsample(scale_factor=2.0, mode="nearest")
                    if pool
                    else nn.Identity(),
                    conv4=nn.Conv2d(channels, channels, 3, padding=1),
                    act4=nn.Sigmoid(),
                    conv5=nn.Conv2d(channels, 1, 3, padding=1),
                    act5=nn.Sigmoid(),
                )
            )
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    module.weight.uniform_(-bound, bound, generator=generator)
                    if module.bias is not None:
                        module.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x``: (N, 1, H, W) -> (N, 1, H, W)."""
        reconstruction: Tensor = self.decoder(self.encoder(x))
        return reconstruction


def train_autoencoder(
    autoencoder: nn.Module,
    x: Tensor,
    *,
    noise: float = 0.1,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    seed: int = 0,
) -> nn.Module:
    r"""Train a denoising autoencoder in place on clean data, as MagNet does.

    Minimises, with Adam, the mean squared error of reconstructing ``x`` from
    ``clip(x + noise · ε, 0, 1)``, ``ε ~ N(0, I)``, plus the L2 weight penalty
    ``weight_decay`` (Meng and Chen 2017, section 4: noise volume 0.1, a small L2
    regulariser). The minibatch order and the noise come from one generator seeded with
    ``seed``; the same autoencoder weights, data and seed give the same result.

    Args:
        autoencoder: maps (N, ...) in [0, 1] to reconstructions of the same shape.
        x: clean training inputs (N, ...) in [0, 1].
        noise: standard deviation of the Gaussian input noise, >= 0.
        epochs: passes over the data.
        batch_size: samples per step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty on the weights (Adam's ``weight_decay``), >= 0.
        seed: seed of the minibatch order and of the noise.

    Returns:
        ``autoencoder``, trained and in eval mode.

    """
    if not isinstance(autoencoder, nn.Module):
        raise InvalidTypeError(
            f"autoencoder must be a torch.nn.Module, got {describe(autoencoder)}"
        )
    x = check_inputs(x, bounds=_BOUNDS)
    noise = check_real(noise, "noise", minimum=0.0)
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    seed = check_seed(seed) or 0
    generator = torch.Generator(device=x.device).manual_seed(seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr, weight_decay=weight_decay)
    autoencoder.train()
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator, device=x.device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            clean = x[order[start : start + batch_size]]
            eps = torch.randn(clean.shape, generator=generator, dtype=x.dtype, device=x.device)
            noisy = (clean + noise * eps).clamp_(*_BOUNDS)
            loss = F.mse_loss(autoencoder(noisy), clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * clean.shape[0]
        logger.debug("epoch %d/%d: mse %.5f", epoch + 1, epochs, total / x.shape[0])
    return autoencoder.eval()


def reconstruction_error(x: Tensor, reconstruction: Tensor, p: float) -> Tensor:
    r"""MagNet's reconstruction-error score :math:`\|x - \mathrm{AE}(x)\|_p` per sample.

    Args:
        x: inputs (N, ...).
        reconstruction: the autoencoder's output for ``x``, same shape.
        p: the norm's order, >= 1 (MagNet uses 1 and 2).

    Returns:
        (N,) non-negative scores.

    """
    norms: Tensor = torch.linalg.vector_norm((x - reconstruction).flatten(1), ord=p, dim=1)
    return norms


def jensen_shannon(logits: Tensor, other: Tensor, temperature: float) -> Tensor:
    r"""Jensen-Shannon divergence between the tempered softmax outputs of two logit batches.

    With :math:`P = \operatorname{softmax}(z / T)`, :math:`Q = \operatorname{softmax}(z' / T)`
    and :math:`M = (P + Q) / 2`,

    .. math:: \mathrm{JSD}(P \| Q) = \tfrac12 \mathrm{KL}(P \| M) + \tfrac12 \mathrm{KL}(Q \| M),

    in nats: symmetric, zero exactly when ``P = Q``, at most ``log 2``. MagNet's
    probability-divergence score, with ``z = f(x)`` and ``z' = f(AE(x))`` (Meng and Chen
    2017, section 3.1.2). Computed from log-probabilities, so it stays finite and
    differentiable however confident the classifier is.

    Args:
        logits: (N, C) logits.
        other: (N, C) logits.
        temperature: T > 0.

    Returns:
        (N,) divergences in [0, log 2].

    """
    log_p = torch.log_softmax(logits / temperature, dim=1)
    log_q = torch.log_softmax(other / temperature, dim=1)
    # log(P / M) = log 2 - log(1 + Q / P): exactly zero where P = Q, and finite however
    # small P and Q get (both are positive wherever the logits are finite)
    gap = log_q - log_p
    kl_p = (log_p.exp() * (math.log(2.0) - F.softplus(gap))).sum(dim=1)
    kl_q = (log_q.exp() * (math.log(2.0) - F.softplus(-gap))).sum(dim=1)
    return (0.5 * (kl_p + kl_q)).clamp_min(0.0)


def fit_threshold(scores: Tensor, fpr: float) -> Tensor:
    """The smallest order statistic of ``scores`` that at most a fraction ``fpr`` exceed.

    With ``k = floor(fpr · n)``, the ``(n - k)``-th smallest score: exactly ``k`` scores
    lie strictly above it when they are distinct, at most ``k`` with ties. A detector
    that flags ``score > threshold`` thus has false-positive rate ``k / n <= fpr`` on the
    data it was fitted on (and as close to ``fpr`` as ``n`` allows).

    Args:
        scores: (n,) detector scores of clean validation inputs, n >= 1.
        fpr: the largest fraction of them to flag, in [0, 1).

    Returns:
        A 0-dim tensor, the threshold.

    """
    if not isinstance(scores, Tensor) or scores.ndim != 1 or scores.shape[0] == 0:
        raise InvalidArgumentError(f"scores must be a non-empty 1-D tensor, got {describe(scores)}")
    fpr = check_real(fpr, "fpr", minimum=0.0)
    if fpr >= 1.0:
        raise InvalidArgumentError(f"fpr must be in [0, 1), got {fpr}")
    n = scores.shape[0]
    flagged = math.floor(fpr * n + 1e-9)  # 1e-9: fpr * n = 3.0000000000000004 allows 3
    return scores.detach().sort().values[n - 1 - flagged]


class MagNet(nn.Module):
    """A classifier behind MagNet's detectors and reformer (Meng and Chen 2017).

    ``forward`` returns the logits of the reformed input, ``classifier(autoencoder(x))``:
    what a user of the defended model gets when the detectors let an input through.
    :meth:`detect` says which inputs the detectors reject. The detectors are the
    reconstruction errors of order ``p`` (one per entry), then the Jensen-Shannon
    divergences at temperature ``T`` (one per entry), in that order; detector ``i`` flags
    an input when its score exceeds ``thresholds_[i]``. Build one with :func:`fit_magnet`.

    The module is TorchScript-scriptable when the classifier and autoencoder are;
    ``detect``, ``scores`` and ``logits_and_scores`` are exported with ``forward``.

    Args:
        classifier: maps (N, ...) inputs in [0, 1] to (N, C) logits.
        autoencoder: maps (N, ...) inputs to reconstructions of the same shape.
        p: orders of the reconstruction-error detectors.
        temperatures: temperatures of the divergence detectors.
        thresholds: (D,) one threshold per detector; ``None`` for +inf (detect nothing).

    Attributes:
        thresholds_: (D,) buffer, the detectors' thresholds.

    Shape:
        input (N, ...) in [0, 1]; ``forward`` (N, C) logits; ``scores`` (N, D);
        ``detect`` (N,) bool.

    """

    __jit_unused_properties__ = ("detector_names",)  # TorchScript cannot format strings
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read a class-level annotation here
        thresholds_: Tensor

    def __init__(
        self,
        classifier: nn.Module,
        autoencoder: nn.Module,
        *,
        p: Sequence[float] = (1.0, 2.0),
        temperatures: Sequence[float] = (10.0, 40.0),
        thresholds: Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, module in (("classifier", classifier), ("autoencoder", autoencoder)):
            if not isinstance(module, nn.Module):
                raise InvalidTypeError(f"{name} must be a torch.nn.Module, got {describe(module)}")
        self.classifier = classifier
        self.autoencoder = autoencoder
        # tuples, not lists: TorchScript infers their type even when one is empty
        self.p = _check_reals(p, "p", minimum=1.0, exclusive=False)
        self.temperatures = _check_reals(temperatures, "temperatures", minimum=0.0, exclusive=True)
        count = len(self.p) + len(self.temperatures)
        if count == 0:
            raise InvalidArgumentError(
                "MagNet needs at least one detector: p and temperatures are both empty"
            )
        if thresholds is None:
            thresholds = torch.full((count,), math.inf)
        elif not isinstance(thresholds, Tensor) or thresholds.shape != (count,):
            raise InvalidArgumentError(
                f"thresholds must be a tensor of shape ({count},), one per detector, "
                f"got {describe(thresholds)}"
            )
        self.register_buffer("thresholds_", thresholds.detach().clone())

    @property
    def detector_names(self) -> list[str]:
        """A name per detector, in the order of the scores: ``"l1"``, ``"jsd-T10"``, ..."""
        return [f"l{p:g}" for p in self.p] + [f"jsd-T{t:g}" for t in self.temperatures]

    def forward(self, x: Tensor) -> Tensor:
        """The logits of the reformed input, ``classifier(autoencoder(x))``, (N, C)."""
        logits: Tensor = self.classifier(self.autoencoder(x))
        return logits

    @torch.jit.export
    def logits_and_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The reformed logits (N, C) and every detector's score (N, D), in one pass."""
        reconstruction: Tensor = self.autoencoder(x)
        reformed: Tensor = self.classifier(reconstruction)
        columns: list[Tensor] = []
        for p in self.p:
            columns.append(reconstruction_error(x, reconstruction, p))
        if len(self.temperatures) > 0:
            logits: Tensor = self.classifier(x)
            for temperature in self.temperatures:
                columns.append(jensen_shannon(logits, reformed, temperature))
        return reformed, torch.stack(columns, dim=1)

    @torch.jit.export
    def scores(self, x: Tensor) -> Tensor:
        """Every detector's score, (N, D)."""
        return self.logits_and_scores(x)[1]

    @torch.jit.export
    def detect(self, x: Tensor) -> Tensor:
        """(N,) bool: some detector's score exceeds its threshold."""
        return (self.scores(x) > self.thresholds_).any(dim=1)


def _check_reals(values: Any, name: str, *, minimum: float, exclusive: bool) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidTypeError(f"{name} must be a sequence of numbers, got {describe(values)}")
    return tuple(
        check_real(value, f"{name}[{i}]", minimum=minimum, exclusive=exclusive)
        for i, value in enumerate(values)
    )


@torch.no_grad()
def _batched_scores(magnet: MagNet, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([magnet.scores(chunk) for chunk in x.split(batch_size)])


def fit_magnet(
    classifier: nn.Module,
    autoencoder: nn.Module,
    x_val: Tensor,
    *,
    fpr: float = 0.01,
    p: Sequence[float] = (1.0, 2.0),
    temperatures: Sequence[float] = (10.0, 40.0),
    batch_size: int = 512,
) -> MagNet:
    """MagNet around a trained classifier and autoencoder, thresholds fitted on clean data.

    Each of the ``D = len(p) + len(temperatures)`` detectors gets the threshold that it
    exceeds on a fraction ``fpr / D`` of ``x_val`` (:func:`fit_threshold`), so together
    they flag at most a fraction ``fpr`` of ``x_val`` (union bound). Meng and Chen (2017)
    pick thresholds the same way, for a total false-positive rate of a few per cent or
    less. ``x_val`` should be held out from the autoencoder's (and the classifier's)
    training data, whose scores are smaller than those of unseen inputs.

    Args:
        classifier: trained classifier, (N, ...) -> (N, C) logits.
        autoencoder: trained autoencoder (:func:`train_autoencoder`).
        x_val: clean validation inputs (n, ...) in [0, 1].
        fpr: the detectors' largest total false-positive rate on ``x_val``, in (0, 1).
        p: orders of the reconstruction-error detectors.
        temperatures: temperatures of the divergence detectors.
        batch_size: samples per forward pass while scoring ``x_val``.

    Returns:
        The :class:`MagNet`, in eval mode (which also puts both models in eval mode).

    Example:
        >>> import torch
        >>> from vulnscope.data import load_digits
        >>> from vulnscope.models import DigitsMLP, train_classifier
        >>> train = load_digits("train")
        >>> classifier = train_classifier(DigitsMLP(), train.x[:1000], train.y[:1000], epochs=2)
        >>> autoencoder = train_autoencoder(DigitsAutoencoder(), train.x[:1000], epochs=2)
        >>> magnet = fit_magnet(classifier, autoencoder, train.x[1000:], fpr=0.02)
        >>> magnet.detector_names
        ['l1', 'l2', 'jsd-T10', 'jsd-T40']
        >>> float(magnet.detect(train.x[1000:]).float().mean()) <= 0.02
        True

    """
    x_val = check_inputs(x_val, bounds=_BOUNDS, name="x_val")
    fpr = check_real(fpr, "fpr", minimum=0.0, exclusive=True)
    if fpr >= 1.0:
        raise InvalidArgumentError(f"fpr must be in (0, 1), got {fpr}")
    batch_size = check_int(batch_size, "batch_size")
    magnet = MagNet(classifier, autoencoder, p=p, temperatures=temperatures).eval()
    scores = _batched_scores(magnet, x_val, batch_size)
    each = fpr / scores.shape[1]
    # assigning the buffer (rather than copying into it) keeps the scores' dtype
    magnet.thresholds_ = torch.stack([fit_threshold(column, each) for column in scores.T])
    logger.debug(
        "MagNet thresholds %s",
        dict(zip(magnet.detector_names, magnet.thresholds_.tolist(), strict=True)),
    )
    return magnet
