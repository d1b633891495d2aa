"""Input normalisation inside the model, so that attacks work in the pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vulnscope._validation import check_real
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["Normalized"]


class Normalized(nn.Module):
    r"""``model((x - mean) / std)``, per channel: the model as a function of raw pixels.

    Most image classifiers are trained on normalised inputs. Attacks must perturb the
    pixels, inside their bounds ([0, 1]) and with budgets measured there; wrapping the
    normalisation into the model keeps every eps in pixel units and every bound exact.

    Args:
        model: the classifier, taking normalised (N, C, ...) inputs.
        mean: one value per channel (or one for all).
        std: one value per channel (or one for all), each > 0.

    Shape:
        input (N, C, ...) raw pixels; output what ``model`` returns.

    Example:
        >>> import torch
        >>> inner = torch.nn.Flatten()
        >>> wrapped = Normalized(inner, mean=[0.5], std=[0.25])
        >>> wrapped(torch.ones(1, 1, 1, 2))
        tensor([[2., 2.]])

    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        means = [check_real(value, "mean") for value in mean]
        stds = [check_real(value, "std", minimum=0.0, exclusive=True) for value in std]
        if not means or len(means) != len(stds):
            raise InvalidArgumentError(
                f"mean and std must have one value per channel and the same length, "
                f"got {len(means)} and {len(stds)}"
            )
        self.model = model
        self.register_buffer("mean", torch.tensor(means))
        self.register_buffer("std", torch.tensor(stds))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise (N, C, ...) pixels and run the model."""
        if self.mean.numel() != 1 and x.shape[1] != self.mean.numel():
            raise InvalidArgumentError(
                f"normalisation has {self.mean.numel()} channels but the input has "
                f"{x.shape[1]} (shape {tuple(x.shape)})"
            )
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = self.mean.to(x.dtype).view(shape)
        std = self.std.to(x.dtype).view(shape)
        output: Tensor = self.model((x - mean) / std)
        return output
