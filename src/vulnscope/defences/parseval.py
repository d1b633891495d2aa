r"""Parseval networks: layers kept close to Parseval tight frames during training.

Cissé, Bojanowski, Grave, Dauphin and Usunier (2017), "Parseval networks: improving
robustness to adversarial examples". A network whose every layer is 1-Lipschitz cannot
amplify an input perturbation, so the paper keeps

* each linear layer's weight ``W`` (out, in) a Parseval tight frame: ``W Wᵀ = I`` when
  out <= in (orthonormal rows), ``Wᵀ W = I`` otherwise (orthonormal columns), so that
  ``||W||₂ = 1``;
* each convolution's kernel, reshaped to ``W`` (out, in·k) with ``k`` the kernel area
  (the number of spatial taps: ``kh·kw`` in 2-D), a *scaled* Parseval frame:
  ``√k W`` is Parseval, i.e. ``W Wᵀ = I / k``. The convolution is ``W`` applied to the
  unfolded input (every patch of ``k`` taps), and each input coordinate appears in at most
  ``k`` patches, so ``||U(x)||₂ <= √k ||x||₂`` and the layer's Lipschitz constant is at
  most ``√k ||W||₂ = 1`` (the paper's bound; strides and dilation only lower it);
* each aggregation layer a convex combination of its branches
  (:class:`ConvexAggregation`), 1-Lipschitz when its branches are.

After every optimiser step, :func:`parseval_retraction` takes one gradient step on
``¼||Vᵀ V - I||²_F`` for ``V = √k W`` (``k = 1`` for a linear layer),

.. math::
    V \leftarrow (1 + \beta) V - \beta V V^\top V,

which moves every singular value ``s`` to ``s + β s (1 - s²)``: towards 1 from either
side, without computing a decomposition. It then projects every
:class:`ConvexAggregation`'s weights back onto the probability simplex. The paper applies
the step to a random subset of rows for speed; here every row is updated (exact and still
cheap at these sizes). Grouped convolutions are constrained group by group (their
operator is block-diagonal). Biases are left alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._simplex import project_to_simplex
from vulnscope._validation import check_int, check_real, describe
from vulnscope.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["ConvexAggregation", "parseval_deviation", "parseval_retraction"]

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ConvexAggregation(nn.Module):
    r"""The sum of its branches' outputs weighted by ``α`` on the probability simplex.

    .. math:: y = \sum_i \alpha_i f_i(x), \qquad \alpha_i \ge 0,\ \sum_i \alpha_i = 1,

    the aggregation layer of Parseval networks (Cissé et al. 2017): a residual block
    ``x + f(x)`` becomes ``ConvexAggregation(nn.Identity(), f)``, ``α₁ x + α₂ f(x)``,
    whose Lipschitz constant is at most the largest of its branches'. ``α`` starts
    uniform and is learned; :func:`parseval_retraction` projects it back onto the simplex
    after each step. Scriptable with :func:`torch.jit.script`.

    Args:
        *branches: the modules whose outputs are summed; at least one, all returning
            tensors of the same shape.

    Attributes:
        branches: the branches, an :class:`torch.nn.ModuleList`.
        alpha: (len(branches),) the weights, a parameter.

    Shape:
        input: whatever the branches take; output: the branches' common output shape.

    Example:
        >>> block = ConvexAggregation(nn.Identity(), nn.Linear(3, 3))
        >>> block.alpha
        Parameter containing:
        tensor([0.5000, 0.5000], requires_grad=True)
        >>> tuple(block(torch.zeros(2, 3)).shape)
        (2, 3)

    """

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        if not branches:
            raise InvalidArgumentError("branches must hold at least one module, got none")
        for index, branch in enumerate(branches):
            if not isinstance(branch, nn.Module):
                raise InvalidTypeError(
                    f"branches[{index}] must be a torch.nn.Module, got {describe(branch)}"
                )
        self.branches = nn.ModuleList(branches)
        self.alpha = nn.Parameter(torch.full((len(branches),), 1.0 / len(branches)))

    def forward(self, x: Tensor) -> Tensor:
        """``Σ_i alpha[i] · branches[i](x)``."""
        outputs: list[Tensor] = []
        for branch in self.branches:
            outputs.append(branch(x))
        stacked = torch.stack(outputs)
        weights = self.alpha.reshape([-1] + [1] * (stacked.dim() - 1))
        return (weights * stacked).sum(0)

    def extra_repr(self) -> str:
        """The number of branches."""
        return f"branches={len(self.branches)}"


def parseval_retraction(model: nn.Module, *, beta: float = 0.0003, num_passes: int = 1) -> None:
    r"""Pull every linear and convolutional layer of ``model`` towards a Parseval frame.

    For each :class:`~torch.nn.Linear` weight and each :class:`~torch.nn.Conv1d`,
    :class:`~torch.nn.Conv2d` or :class:`~torch.nn.Conv3d` kernel, reshaped to ``W``
    (out, in·k) per group, applies ``num_passes`` times, in place,

    .. math::
        W \leftarrow (1 + \beta) W - \beta k\, W W^\top W,

    the step ``V ← (1 + β) V - β V Vᵀ V`` on ``V = √k W`` (``k`` the kernel area, 1 for a
    linear layer; see the module docstring for the scaling). Each singular value ``s`` of
    ``V`` becomes ``s + β s (1 - s²)``: repeated steps drive them all to 1, so a tall
    ``V`` gets ``Vᵀ V ≈ I`` and a wide one ``V Vᵀ ≈ I``; near 1 the error shrinks by
    ``1 - 2β`` per step. Then projects the weights of every :class:`ConvexAggregation`
    onto the probability simplex. Runs under :func:`torch.no_grad`.

    Made to be called after each optimiser step; for another ``beta``, bind it with
    :func:`functools.partial`::

        train_classifier(model, x, y, after_step=partial(parseval_retraction, beta=1e-3))

    Args:
        model: the network, modified in place.
        beta: the step size, in (0, 1); the paper's default 0.0003 suits a step after
            every minibatch. Singular values above ``√((1 + β) / β)`` diverge, so large
            steps need weights that already have ``||√k W||₂`` of order 1.
        num_passes: steps per call, >= 1.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = nn.Linear(6, 3)
        >>> for _ in range(200):
        ...     parseval_retraction(layer, beta=0.1)
        >>> torch.linalg.svdvals(layer.weight).sub(1).abs().max() < 1e-4
        tensor(True)

    """
    model = _check_module(model)
    beta = check_real(beta, "beta", minimum=0.0, exclusive=True)
    if beta >= 1.0:
        raise InvalidArgumentError(f"beta must be in (0, 1), got {beta}")
    num_passes = check_int(num_passes, "num_passes")
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, ConvexAggregation):
                alpha = module.alpha
                alpha.copy_(project_to_simplex(alpha.detach()).to(alpha.dtype))
                continue
            layer = _frame(module)
            if layer is None:
                continue
            blocks, area = layer
            for _ in range(num_passes):
                blocks = _retract(blocks, beta, area)
            module.weight.copy_(blocks.reshape(module.weight.shape))


def parseval_deviation(model: nn.Module) -> dict[str, float]:
    r"""How far each layer is from the Parseval constraint: ``||G - I||_F``, per layer.

    ``G`` is the smaller Gram matrix of ``V = √k W`` (as in :func:`parseval_retraction`):
    ``V Vᵀ`` when out <= in·k, ``Vᵀ V`` otherwise, so the deviation is
    ``√(Σ_i (s_i² - 1)²)`` over the singular values ``s_i`` of ``V``: zero exactly on a
    Parseval frame. Grouped convolutions sum the squares over their groups. Computed in
    float64.

    Args:
        model: the network.

    Returns:
        ``{name: deviation}`` for every linear and convolutional layer, keyed by its name
        in ``model.named_modules()`` (the empty string for ``model`` itself), in that
        order.

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.eye(4)[:2])
        >>> parseval_deviation(layer)
        {'': 0.0}

    """
    model = _check_module(model)
    deviations: dict[str, float] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            layer = _frame(module)
            if layer is None:
                continue
            blocks, area = layer
            scaled = blocks.to(torch.float64) * math.sqrt(area)
            rows, columns = scaled.shape[-2:]
            gram = scaled @ scaled.mT if rows <= columns else scaled.mT @ scaled
            identity = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            per_group = torch.linalg.matrix_norm(gram - identity)
            deviations[name] = float(per_group.square().sum().sqrt())
    return deviations


def _check_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    return model


def _frame(module: nn.Module) -> tuple[Tensor, int] | None:
    """A constrained layer's weight as (groups, out/groups, in/groups·k) and its ``k``.

    ``None`` for every other module.
    """
    if isinstance(module, nn.Linear):
        return module.weight[None], 1
    if isinstance(module, _CONVOLUTIONS):
        weight = module.weight
        groups = module.groups
        area = math.prod(weight.shape[2:])
        return weight.reshape(groups, weight.shape[0] // groups, -1), area
    return None


def _retract(blocks: Tensor, beta: float, area: int) -> Tensor:
    """One step ``W ← (1 + β) W - β k W Wᵀ W`` on (groups, m, n), the cheaper way round."""
    rows, columns = blocks.shape[-2:]
    # W Wᵀ W is the same product either way; the inner Gram matrix is the smaller side
    wide = rows <= columns
    cubic = (blocks @ blocks.mT) @ blocks if wide else blocks @ (blocks.mT @ blocks)
    return (1.0 + beta) * blocks - (beta * area) * cubic
