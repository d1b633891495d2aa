r"""A small RealNVP normalising flow of images in [0, 1] (trained in :mod:`.flow_training`).

Dinh, Sohl-Dickstein and Bengio (2017), "Density estimation using Real NVP", with Glow's
ActNorm (Kingma and Dhariwal 2018). An image ``x`` of shape ``(C, H, W)`` in [0, 1] is
mapped to a latent ``z`` of the same shape by

1. the logit transform ``y = logit(α + (1 - 2α) x)`` (RealNVP's preprocessing; ``α``
   keeps the logit finite at 0 and 1, so the density lives on the slightly larger box
   ``(-α/(1-2α), (1-α)/(1-2α))``),
2. ``couplings`` blocks of ActNorm then an affine coupling with a checkerboard mask whose
   parity alternates: the masked half passes unchanged and conditions, through an MLP,
   a scale ``exp(s)`` (``s = scale · tanh(·)``) and a shift of the other half.

``log p(x) = log N(z; 0, I) + log |det ∂z/∂x|`` in **nats per image** (not per
dimension; :func:`bits_per_dim` converts). The density is continuous: training adds
uniform dequantisation noise of one grey level (the digits have 17 levels, ``1/16``
apart), so ``log_prob`` at a data point is the density there, not a probability mass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import Tensor, nn

from vulnscope._io import write_bytes_atomic
from vulnscope._validation import check_batch, check_fraction, check_int
from vulnscope.errors import DataError, InvalidArgumentError, InvalidTypeError, MissingFileError

__all__ = ["AffineCouplingFlow", "bits_per_dim", "load_flow", "save_flow"]

_LOG_2PI = math.log(2 * math.pi)


class _ActNorm(nn.Module):
    """``y = (x + bias) · exp(log_scale)`` per feature; Glow's data-dependent start."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Zero mean and unit variance per feature on the batch ``x`` (N, D)."""
        self.bias.copy_(-x.mean(0))
        self.log_scale.copy_(-x.std(0).clamp_min(1e-3).log())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x + self.bias) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp() - self.bias


class _AffineCoupling(nn.Module):
    """RealNVP's affine coupling: ``y = m·x + (1-m)·(x·exp(s(m·x)) + t(m·x))``."""

    def __init__(self, mask: Tensor, hidden: int) -> None:
        super().__init__()
        features = mask.numel()
        self.mask: Tensor
        self.register_buffer("mask", mask.clone(), persistent=False)  # built, not learned
        last = nn.Linear(hidden, 2 * features)
        # A zero last layer starts the coupling at the identity (Glow, section 3.3).
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last
        )
        self.scale = nn.Parameter(torch.ones(features))

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = self.net(kept).chunk(2, dim=1)
        free = 1 - self.mask
        return self.scale * torch.tanh(raw_scale) * free, shift * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._scale_shift(x * self.mask)
        return x * log_scale.exp() + shift, log_scale.sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        log_scale, shift = self._scale_shift(y * self.mask)
        return (y - shift) * (-log_scale).exp()


class AffineCouplingFlow(nn.Module):
    """A RealNVP flow of images in [0, 1]: logit, then ActNorm and affine couplings.

    Args:
        shape: the image shape ``(C, H, W)``.
        couplings: number of ActNorm + coupling blocks (checkerboard parity alternates).
        hidden: width of each coupling's two-layer MLP.
        alpha: the logit transform's margin, in (0, 0.5).

    Shape:
        ``forward``: x (N, C, H, W) -> z (N, C, H, W), log_det (N,);
        ``inverse``: z (N, C, H, W) -> x (N, C, H, W); ``log_prob``: x -> (N,) nats.

    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (1, 8, 8),
        *,
        couplings: int = 8,
        hidden: int = 128,
        alpha: float = 0.05,
    ) -> None:
        super().__init__()
        if len(shape) != 3:
            raise InvalidArgumentError(f"shape must be (C, H, W), got {shape!r}")
        self.shape = tuple(check_int(n, f"shape[{i}]") for i, n in enumerate(shape))
        self.couplings = check_int(couplings, "couplings")
        self.hidden = check_int(hidden, "hidden")
        self.alpha = check_fraction(alpha, "alpha")
        if self.alpha >= 0.5:
            raise InvalidArgumentError(f"alpha must be in (0, 0.5), got {alpha}")
        channels, height, width = self.shape
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        board = ((rows + cols) % 2).float().expand(channels, height, width).reshape(-1)
        features = board.numel()
        self.norms = nn.ModuleList(_ActNorm(features) for _ in range(self.couplings))
        self.layers = nn.ModuleList(
            _AffineCoupling(board if k % 2 else 1 - board, self.hidden)
            for k in range(self.couplings)
        )

    def _blocks(self) -> list[tuple[_ActNorm, _AffineCoupling]]:
        return [
            (cast(_ActNorm, norm), cast(_AffineCoupling, layer))
            for norm, layer in zip(self.norms, self.layers, strict=True)
        ]

    def _check(self, x: Tensor, name: str) -> Tensor:
        x = check_batch(x, name)
        if tuple(x.shape[1:]) != self.shape:
            raise InvalidArgumentError(
                f"{name} must have shape (N, {', '.join(map(str, self.shape))}) for this flow, "
                f"got {tuple(x.shape)}"
            )
        return x.flatten(1)

    def _logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_det = (math.log(1 - 2 * self.alpha) - p.log() - (-p).log1p()).sum(1)
        return p.log() - (-p).log1p(), log_det

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The latent ``z`` of ``x`` and ``log |det ∂z/∂x|`` per image (nats)."""
        h, log_det = self._logit(self._check(x, "x"))
        for norm, layer in self._blocks():
            h, norm_det = norm(h)
            h, layer_det = layer(h)
            log_det = log_det + norm_det + layer_det
        return h.view(x.shape), log_det

    def inverse(self, z: Tensor) -> Tensor:
        """The image ``x`` whose latent is ``z`` (inside the logit's box, not clipped)."""
        h = self._check(z, "z")
        for norm, layer in reversed(self._blocks()):
            h = norm.inverse(layer.inverse(h))
        x = (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha)
        return x.view(z.shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats per image, (N,)."""
        z, log_det = self(x)
        flat = z.flatten(1)
        log_prob: Tensor = -0.5 * (flat.square().sum(1) + flat.shape[1] * _LOG_2PI) + log_det
        return log_prob

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Glow's data-dependent start: each ActNorm whitens its input on the batch ``x``."""
        h, _ = self._logit(self._check(x, "x"))
        for norm, layer in self._blocks():
            norm.initialize(h)
            h = layer(norm(h)[0])[0]


def bits_per_dim(log_prob: Tensor, dimensions: int) -> Tensor:
    """``-log p / (D ln 2)``: a log-density in nats per image as bits per dimension."""
    return -log_prob / (dimensions * math.log(2))


def save_flow(
    flow: AffineCouplingFlow, path: str | Path, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write the flow's weights and architecture to a safetensors file, atomically."""
    if not isinstance(flow, AffineCouplingFlow):
        raise InvalidTypeError(f"flow must be an AffineCouplingFlow, got {type(flow).__name__}")
    architecture = {
        "shape": list(flow.shape),
        "couplings": flow.couplings,
        "hidden": flow.hidden,
        "alpha": flow.alpha,
    }
    header = {**(metadata or {}), "architecture": json.dumps(architecture)}
    state = {key: value.detach().cpu().contiguous() for key, value in flow.state_dict().items()}
    return write_bytes_atomic(path, save(state, metadata=header))


def load_flow(path: str | Path) -> AffineCouplingFlow:
    """A flow written by :func:`save_flow` (never unpickles), on the CPU, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"flow file {str(path)!r} does not exist")
    raw = path.read_bytes()
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        architecture = json.loads(header["architecture"])
        flow = AffineCouplingFlow(
            tuple(architecture["shape"]),
            couplings=architecture["couplings"],
            hidden=architecture["hidden"],
            alpha=architecture["alpha"],
        )
        flow.load_state_dict(load(raw))
    except (SafetensorError, KeyError, ValueError, RuntimeError) as error:
        raise DataError(f"{path}: is not a flow written by save_flow ({error})") from None
    return flow.eval()
