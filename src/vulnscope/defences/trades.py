r"""TRADES: trade natural accuracy against robustness with a boundary term.

Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan (2019), "Theoretically principled trade-off
between robustness and accuracy", minimise

.. math:: \ell_{\mathrm{CE}}(f(x), y) + \beta\, \max_{\|x' - x\| \le \epsilon}
          \mathrm{KL}\big(p(x) \,\|\, p(x')\big),

with ``p = softmax(f)``: the first term fits the labels, the second pushes the decision
boundary away from the data. The inner maximum is found by projected steepest ascent on
the KL from ``x + 0.001 N(0, I)``, with the model in eval mode, as in the paper; the
outer loss is taken in training mode, differentiating through both ``p(x)`` and
``p(x')``. ``beta`` sets the trade-off (the paper uses 1 to 6; 0 is plain training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from vulnscope._validation import check_bounds, check_int, check_norm, check_real
from vulnscope.attacks.norms import project, steepest_ascent
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.state import preserved_model_state

__all__ = ["TRADES", "trades_loss"]


def trades_loss(clean_logits: Tensor, adversarial_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    r"""``CE(clean, y) + beta * KL(softmax(clean) || softmax(adversarial))``, batch means.

    Args:
        clean_logits: (B, C) logits at the clean inputs.
        adversarial_logits: (B, C) logits at the inner maximiser ``x'``.
        y: (B,) int64 labels.
        beta: weight of the boundary term, >= 0.

    Returns:
        The scalar loss.

    """
    beta = check_real(beta, "beta", minimum=0.0)
    natural = F.cross_entropy(clean_logits, y)
    if beta == 0.0:
        return natural
    return natural + beta * _kl(clean_logits, adversarial_logits).mean()


def _kl(clean_logits: Tensor, adversarial_logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(clean) || softmax(adversarial))``, shape (B,)."""
    log_p = F.log_softmax(clean_logits, dim=1)
    log_q = F.log_softmax(adversarial_logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


class TRADES:
    """The TRADES objective for :func:`vulnscope.models.train_classifier`.

    Args:
        eps: radius of the ball of the inner maximisation, > 0.
        beta: weight of the boundary term, >= 0 (default 6, the paper's MNIST setting).
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: ascent steps of the inner maximisation (default 10).
        step_size: ascent step; ``None`` for ``eps / 4``.
        bounds: input bounds, default ``(0, 1)``.

    Shape:
        x: (B, ...) inside ``bounds``; y: (B,) int64 labels; returns a scalar loss.

    """

    def __init__(
        self,
        *,
        eps: float,
        beta: float = 6.0,
        norm: str = "linf",
        steps: int = 10,
        step_size: float | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
        self.beta = check_real(beta, "beta", minimum=0.0)
        self.norm = check_norm(norm, allowed=("linf", "l2"))
        self.steps = check_int(steps, "steps")
        self.step_size = (
            self.eps / 4
            if step_size is None
            else check_real(step_size, "step_size", minimum=0.0, exclusive=True)
        )
        self.bounds = check_bounds(bounds)

    def __repr__(self) -> str:
        return (
            f"TRADES(eps={self.eps!r}, beta={self.beta!r}, norm={self.norm!r}, "
            f"steps={self.steps}, step_size={self.step_size!r})"
        )

    def inner_maximum(self, model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x'`` (B, ...): projected ascent on ``KL(p(x) || p(x'))`` in the eps-ball, eval mode."""
        # eval mode, parameters frozen (gradients with respect to x only), all restored after
        with preserved_model_state(model), torch.enable_grad():
            model.eval()
            with torch.no_grad():
                clean = model(x).detach()
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_adv = project(x, x + 0.001 * noise, norm=self.norm, eps=self.eps, bounds=self.bounds)
            for _ in range(self.steps):
                x_adv = x_adv.detach().requires_grad_(True)
                divergence = _kl(clean, model(x_adv)).sum()
                (grad,) = torch.autograd.grad(divergence, x_adv)
                x_adv = project(
                    x,
                    x_adv.detach() + self.step_size * steepest_ascent(grad, self.norm),
                    norm=self.norm,
                    eps=self.eps,
                    bounds=self.bounds,
                )
        return x_adv.detach()

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> Tensor:
        """The TRADES loss of a minibatch (scalar)."""
        if y.is_floating_point():
            raise InvalidArgumentError(
                "TRADES needs integer class labels y, got probability targets"
            )
        if self.beta == 0.0:
            return F.cross_entropy(model(x), y)
        x_adv = self.inner_maximum(model, x, generator)
        return trades_loss(model(x), model(x_adv), y, self.beta)
