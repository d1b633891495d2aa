r"""Li and Li's mean-blur filter: an input the classifier sees differently once blurred.

Li and Li (2017), "Adversarial examples detection in deep networks with convolutional
filter statistics", section 4: a small average filter applied to the input removes much
of an adversarial perturbation, so an adversarial input's classification tends to change
after blurring while a clean input's does not. The paper recovers the clean label with
the filter; as a detector (Carlini and Wagner 2017, section 7.2) the score is how much the
classifier's output moves.

On the 8×8 digits a 3×3 window is a coarse blur: it changes the reference CNN's class of
about a fifth of the clean test digits, and the detector is weak (ROC AUC about 0.77
against PGD examples stopped at the boundary, 0.63 against PGD's last iterates at L-inf
0.2, 0.70 against FGSM at 0.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from vulnscope._validation import check_int
from vulnscope.detect.base import Detector
from vulnscope.errors import InvalidArgumentError

__all__ = ["MeanBlur", "mean_blur"]

Model = Callable[[Tensor], Tensor]


def mean_blur(x: Tensor, size: int = 3) -> Tensor:
    """Each pixel replaced by the mean of the ``size`` × ``size`` window around it.

    Near the border the window is cut to the pixels inside the image (no padding value
    enters the mean).

    Args:
        x: (N, C, H, W) images.
        size: odd window side.

    Returns:
        (N, C, H, W) blurred images.

    """
    blurred: Tensor = F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    return blurred


class MeanBlur(Detector):
    r"""Scores an input by the change of the classifier's output after a mean blur.

    With the classifier's softmax :math:`p` and the ``size`` × ``size`` mean blur
    :math:`B`,

    .. math:: s(x) = [\arg\max p(x) \ne \arg\max p(B x)] + \|p(x) - p(B x)\|_1,

    in [0, 3]: every input whose predicted class changes scores above every input whose
    class stays. Nothing is learned. Differentiable almost everywhere: the indicator's
    gradient is zero, the L1 term's is not.

    Args:
        size: odd side of the blur's window (3 in the paper).

    Shape:
        inputs (N, C, H, W) in [0, 1]; scores (N,).

    """

    name = "blur"
    paper = "Li and Li (2017), Adversarial examples detection in deep networks (mean blur)"

    def __init__(self, *, size: int = 3) -> None:
        super().__init__()
        self.size = check_int(size, "size")
        if self.size % 2 == 0:
            raise InvalidArgumentError(f"size must be an odd window side, got {self.size}")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Nothing to build: the filter has no learned part."""
        if len(input_shape) != 3:
            raise InvalidArgumentError(
                f"inputs must be images shaped (N, C, H, W), got (N, {input_shape})"
            )

    def fit_parts(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator) -> None:
        """Nothing to learn."""

    def raw_score(self, model: Model, x: Tensor) -> Tensor:
        """Label change plus the L1 change of the softmax."""
        before = torch.softmax(model(x), dim=1)
        after = torch.softmax(model(mean_blur(x, self.size)), dim=1)
        changed = (before.argmax(1) != after.argmax(1)).to(before.dtype)
        return changed + (before - after).abs().sum(1)
