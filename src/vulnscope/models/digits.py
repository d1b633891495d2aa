"""Small reference classifiers for the 8x8 digits."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from vulnscope._validation import check_int
from vulnscope.models.layout import ChannelsLastConv2d
from vulnscope.models.pooling import WindowMaxPool2d

__all__ = ["DigitsCNN", "DigitsMLP"]


class _NamedLayers(nn.Sequential):
    """A sequence of named layers built from options: its slices are plain ``nn.Sequential``.

    ``nn.Sequential`` slices by calling the class with the selected layers, which a
    constructor that takes options (widths, classes) cannot accept. Here ``model[:4]``
    is an ``nn.Sequential`` of the same layer objects under the same names, as for any
    ``nn.Sequential``.
    """

    def __getitem__(self, index: slice | int) -> nn.Sequential | nn.Module:
        if isinstance(index, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[index]))
        return super().__getitem__(index)


class DigitsMLP(_NamedLayers):
    """A multilayer perceptron for (N, 1, 8, 8) digits: flatten, two ReLU layers, logits.

    Args:
        hidden: width of each hidden layer.
        num_classes: number of output logits.

    Shape:
        input (N, 1, 8, 8) in [0, 1]; output (N, num_classes) logits.

    """

    def __init__(self, *, hidden: int = 128, num_classes: int = 10) -> None:
        hidden = check_int(hidden, "hidden")
        num_classes = check_int(num_classes, "num_classes", minimum=2)
        super().__init__(
            OrderedDict(
                flatten=nn.Flatten(),
                fc1=nn.Linear(64, hidden),
                relu1=nn.ReLU(),
                fc2=nn.Linear(hidden, hidden),
                relu2=nn.ReLU(),
                logits=nn.Linear(hidden, num_classes),
            )
        )


class DigitsCNN(_NamedLayers):
    """A small convolutional network for (N, 1, 8, 8) digits.

    Two 3x3 convolutions (16 and 32 channels, ReLU), 2x2 max pooling
    (:class:`~vulnscope.models.pooling.WindowMaxPool2d`), a 128-unit ReLU layer and the
    logits. Its children are named, so layer-wise diagnostics can refer to them.

    Built for speed on CPU, with the same function as the textbook layer order:

    - the first convolution (:class:`~vulnscope.models.layout.ChannelsLastConv2d`) lays
      the input out channels-last, so the convolutions and the pooling work on
      channels-last feature maps, several times faster than the plain layout for these
      8x8 maps (the weights stay plain tensors);
    - the second convolution is pooled *before* its ReLU: max and ReLU commute, values
      and gradients alike (a window's gradient goes to its first maximum either way, and
      is zero where that maximum is not positive), and the ReLU then runs on a quarter
      of the values.

    Everything that attacks the network gains with it (``benchmarks/digits_cnn_speed.py``).

    Args:
        channels: channels of the first convolution (the second has twice as many).
        hidden: width of the fully connected layer.
        num_classes: number of output logits.

    Shape:
        input (N, 1, 8, 8) in [0, 1]; output (N, num_classes) logits.

    """

    def __init__(self, *, channels: int = 16, hidden: int = 128, num_classes: int = 10) -> None:
        channels = check_int(channels, "channels")
        hidden = check_int(hidden, "hidden")
        num_classes = check_int(num_classes, "num_classes", minimum=2)
        super().__init__(
            OrderedDict(
                conv1=ChannelsLastConv2d(1, channels, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(channels, 2 * channels, 3, padding=1),
                pool=WindowMaxPool2d(2),
                relu2=nn.ReLU(),
                flatten=nn.Flatten(),
                fc=nn.Linear(2 * channels * 16, hidden),
                relu3=nn.ReLU(),
                logits=nn.Linear(hidden, num_classes),
            )
        )
