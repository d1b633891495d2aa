r"""A class-conditional decoder: the reverse model of any classifier.

Kenway's defence (2018b, eqs. 19-22) needs the Fisher information of a *generation pass*
``q̃_0(x | y)`` with respect to the output vector ``y``. A deep RBM has one built in (its
own RBMs run downward, :class:`~vulnscope.cloning.generation_fisher.GenerationPassFisher`);
an ordinary classifier does not, so the defender trains one on its own data: the inputs
``x`` it already has and the probability vectors ``y`` its classifier publishes for them.

The choice here is a small network mapping ``y`` to pixel logits ``z(y)`` with an explicit
likelihood ``q̃(x | y) = Π_i Bernoulli(x_i; σ(z_i(y)))`` (grey levels in [0, 1] enter the
cross-entropy as soft targets). Its Fisher information is exact and cheap:

.. math::
    \tilde F(y) = J_z^\top \operatorname{diag}(\mu (1 - \mu)) J_z,
    \qquad \mu = \sigma(z(y)),\quad J_z = \partial z / \partial y,

with ``J_z`` from C forward-mode derivative columns, unlike a learned GAN or a diffusion
model whose likelihood has no closed form. It plays the role of Kenway's reverse network:
the map a cloner implicitly inverts, and so the one whose most sensitive direction in
``y`` poisons the clone most for a given change of the published output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from vulnscope._random import resolve_generator
from vulnscope._validation import (
    check_inputs,
    check_int,
    check_real,
    check_seed,
    describe,
)
from vulnscope.cloning.generation_fisher import check_output_vectors
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["ConditionalDecoder"]


class ConditionalDecoder(nn.Module):
    r"""``y -> z``: output vectors to the pixel logits of a factorised Bernoulli generator.

    Implements :class:`~vulnscope.cloning.reverse.ReverseModel`. Architecture: two hidden
    ``tanh`` layers of ``hidden`` units (smooth in ``y``, so the Fisher information varies
    smoothly along the simplex) and a linear read-out to ``prod(input_shape)`` logits.

    Build and train one with :meth:`fit`; :meth:`output_fisher` gives ``F̃(y)``.

    Args:
        num_classes: C, the length of the output vectors.
        input_shape: shape of one input, e.g. ``(1, 8, 8)``.
        hidden: units per hidden layer.
        seed: seed of the initial weights.

    Shape:
        Input: (B, C) output vectors. Output: (B, *input_shape) pixel logits.

    Example:
        >>> decoder = ConditionalDecoder(3, (2, 2), hidden=8)
        >>> decoder(torch.eye(3)).shape, decoder.output_fisher(torch.eye(3)).shape
        (torch.Size([3, 2, 2]), torch.Size([3, 3, 3]))

    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        *,
        hidden: int = 128,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
            raise InvalidTypeError(
                f"input_shape must be a sequence of sizes such as (1, 8, 8), "
                f"got {describe(input_shape)}"
            )
        self.input_shape = tuple(
            check_int(size, f"input_shape[{i}]") for i, size in enumerate(input_shape)
        )
        self.hidden = check_int(hidden, "hidden")
        self.net = nn.Sequential(
            nn.Linear(self.num_classes, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, self.hidden),
            nn.Tanh(),
            nn.Linear(self.hidden, math.prod(self.input_shape)),
        )
        generator = resolve_generator(None, check_seed(seed))
        with torch.no_grad():  # PyTorch's default U(±1/sqrt(fan_in)), from our generator
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = 1 / math.sqrt(layer.in_features)
                    for param in (layer.weight, layer.bias):
                        param.copy_((2 * torch.rand(param.shape, generator=generator) - 1) * bound)

    def forward(self, probs: Tensor) -> Tensor:
        """Pixel logits ``z(y)``: (B, C) -> (B, *input_shape)."""
        logits: Tensor = self.net(probs.to(next(self.parameters()).dtype))
        return logits.reshape(probs.shape[0], *self.input_shape)

    def loss(self, x: Tensor, probs: Tensor) -> Tensor:
        """Mean per-pixel cross-entropy of inputs ``x`` (in [0, 1]) given their outputs."""
        logits = self(probs)
        return functional.binary_cross_entropy_with_logits(logits, x.to(logits.dtype))

    def output_fisher(self, probs: Tensor) -> Tensor:
        """``F̃(y) = J_zᵀ diag(μ(1-μ)) J_z`` for each row: (B, C) -> (B, C, C) float64.

        Computed in float64 on a float64 copy of the weights, by forward-mode derivatives
        (C columns per row, batched with ``vmap``). Exact: no sampling.
        """
        outputs = check_output_vectors(probs, self.num_classes)
        params = {name: value.detach().double() for name, value in self.net.named_parameters()}

        def logits(y: Tensor) -> Tensor:
            out: Tensor = torch.func.functional_call(self.net, params, (y,))
            return out

        jacobian = torch.func.vmap(torch.func.jacfwd(logits))(outputs)  # (B, n, C)
        mean = torch.sigmoid(logits(outputs))
        weight = (mean * (1 - mean))[..., None]
        fisher: Tensor = jacobian.transpose(1, 2) @ (weight * jacobian)
        return (fisher + fisher.transpose(1, 2)) / 2

    @classmethod
    def fit(
        cls,
        x: Tensor,
        probs: Tensor,
        *,
        hidden: int = 128,
        epochs: int = 200,
        lr: float = 3e-3,
        batch_size: int = 128,
        seed: int | None = 0,
    ) -> ConditionalDecoder:
        """Train a decoder on the defender's data: inputs ``x`` and the victim's outputs.

        Adam on the mean per-pixel cross-entropy of ``x`` given ``probs`` (maximum
        likelihood of the Bernoulli generator; grey levels are soft targets).

        Args:
            x: (N, *input_shape) training inputs in [0, 1].
            probs: (N, C) the victim's clean probability outputs on them.
            hidden: units per hidden layer.
            epochs: passes over the data.
            lr: Adam learning rate.
            batch_size: minibatch size.
            seed: seed of the initial weights and of the minibatch order.

        Returns:
            The trained decoder, in eval mode.

        """
        x = check_inputs(x, bounds=(0.0, 1.0))
        if isinstance(probs, Tensor) and (probs.ndim != 2 or probs.shape[1] < 2):
            raise InvalidArgumentError(
                f"probs must have shape (N, C) with C >= 2 classes, got shape {tuple(probs.shape)}"
            )
        outputs = check_output_vectors(probs, probs.shape[1] if isinstance(probs, Tensor) else 0)
        if outputs.shape[0] != x.shape[0]:
            raise InvalidArgumentError(
                f"probs must have one row per input: x has {x.shape[0]} inputs, "
                f"probs has {outputs.shape[0]} rows"
            )
        epochs = check_int(epochs, "epochs")
        lr = check_real(lr, "lr", minimum=0.0, exclusive=True)
        batch_size = check_int(batch_size, "batch_size")
        seed = check_seed(seed)
        decoder = cls(outputs.shape[1], tuple(x.shape[1:]), hidden=hidden, seed=seed)
        targets = x.detach().to(torch.float32)
        inputs = outputs.to(torch.float32)
        optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
        generator = resolve_generator(None, seed)
        decoder.train()
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            for start in range(0, x.shape[0], batch_size):
                batch = order[start : start + batch_size]
                optimiser.zero_grad()
                decoder.loss(targets[batch], inputs[batch]).backward()
                optimiser.step()
        return decoder.eval()
