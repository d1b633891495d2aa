r"""stAdv: adversarial examples made by moving pixels along a smooth flow field.

Xiao, Zhu, Li, He, Liu and Song (2018), "Spatially transformed adversarial examples"
(ICLR). Every output pixel ``p`` is read, by bilinear interpolation, from the input at
``p + f(p)``; the flow ``f`` is optimised for

.. math:: \mathcal L_{adv}(x_f) + \tau\, \mathcal L_{flow}(f), \qquad
    \mathcal L_{flow}(f) = \sum_p \sum_{q \in \mathcal N(p)}
    \sqrt{\|\Delta u^{(p)} - \Delta u^{(q)}\|_2^2 + \|\Delta v^{(p)} - \Delta v^{(q)}\|_2^2
    + \epsilon},

the flow's total variation over each pixel's 4-neighbourhood :math:`\mathcal N(p)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from vulnscope._validation import NORMS, check_int, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import is_adversarial, margin
from vulnscope.attacks.refine import fit_in_cap
from vulnscope.errors import InvalidArgumentError

__all__ = ["FlowResult", "StAdv", "apply_flow", "flow_loss"]


@dataclass(frozen=True)
class FlowResult:
    """The flow stAdv found, with its size and what it does.

    Attributes:
        flow: (N, 2, H, W) displacement in pixels, rows (down) then columns (right);
            zero where no adversarial flow was found.
        flow_loss: (N,) the flow's total variation :func:`flow_loss`.
        x_adv: (N, C, H, W) the input moved by ``flow``, inside the bounds.
        success: (N,) bool, the model is fooled at ``x_adv``.

    """

    flow: Tensor
    flow_loss: Tensor
    x_adv: Tensor
    success: Tensor


def flow_loss(flow: Tensor, *, smoothing: float = 1e-8) -> Tensor:
    r"""The flow's total variation, :math:`\mathcal L_{flow}` of Xiao et al. (2018).

    Each ordered pair of 4-neighbours ``(p, q)`` inside the image contributes
    :math:`\sqrt{|f(p) - f(q)|^2 + \epsilon}` (so every adjacent pair counts twice, as
    the sum over ``p`` and ``q in N(p)`` does).

    Args:
        flow: (N, 2, H, W).
        smoothing: the :math:`\epsilon` inside the square root, which keeps the gradient
            finite at a constant flow.

    Returns:
        (N,) the loss per sample.

    """
    down = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    right = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    vertical = (down.pow(2).sum(1) + smoothing).sqrt().flatten(1).sum(1)
    horizontal = (right.pow(2).sum(1) + smoothing).sqrt().flatten(1).sum(1)
    return 2.0 * (vertical + horizontal)


def apply_flow(x: Tensor, flow: Tensor) -> Tensor:
    """``x`` resampled at every pixel plus its flow, bilinearly (``F.grid_sample``).

    Outside the image the border pixels repeat. ``grid_sample`` reads its identity grid
    back with rounding errors (about 1e-7 in float32), so the result is ``x`` plus the
    flow's change, ``sample(p + f) - sample(p)``: pixels the flow leaves alone are
    unchanged bit for bit, and a zero flow is the identity exactly.

    Args:
        x: (N, C, H, W) images.
        flow: (N, 2, H, W) displacements in pixels: rows, then columns.

    Returns:
        (N, C, H, W).

    """
    n, _, h, w = x.shape
    rows = torch.arange(h, dtype=x.dtype, device=x.device)
    cols = torch.arange(w, dtype=x.dtype, device=x.device)
    base = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    # grid_sample's coordinates with align_corners=True: -1 and 1 at the outer pixels.
    scale = torch.tensor(
        [2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)], dtype=x.dtype, device=x.device
    )[:, None, None]

    def sample(points: Tensor) -> Tensor:
        grid = (points * scale - 1.0).flip(1).permute(0, 2, 3, 1)  # (N, H, W, (col, row))
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    return x + (sample(base + flow) - sample(base.expand(n, -1, -1, -1)))


class StAdv(Attack):
    r"""stAdv: the smoothest flow field that fools the model.

    Xiao, Zhu, Li, He, Liu and Song (2018), "Spatially transformed adversarial examples"
    (ICLR). The flow ``f`` (N, 2, H, W), in pixels, starts at zero and minimises

    .. math:: \max(-\mathrm{margin}(x_f), -\kappa) + \tau \mathcal L_{flow}(f),

    the C&W margin loss of the moved image :func:`apply_flow` (positive margin: fooled)
    and the flow's total variation :func:`flow_loss`. Xiao et al. minimise it with
    L-BFGS; this uses Adam, whose per-coordinate steps keep every sample's problem
    independent of the rest of the batch (a batched L-BFGS shares its line search and
    curvature history across samples). Of the iterates that fool the model, each sample
    keeps the one with the smallest flow loss; a sample never fooled returns ``x``.

    The budget is the flow's smoothness, not an Lp ball: like every attack, the result's
    ``norms`` report the pixel change ``x_adv - x`` in the attack's ``norm``, and
    :meth:`flow_field` returns the flow itself with its total variation. An ``eps`` is a
    cap on that pixel change, as for the other minimal attacks: a result outside it is
    projected onto the ball if that is still adversarial, else ``x``. Deterministic.

    Args:
        norm: the norm ``norms`` are reported in, and of the cap ``eps``.
        eps: optional cap on the pixel change.
        tau: weight of the flow loss (Xiao et al.: 0.05).
        kappa: confidence margin of the adversarial loss (default 0).
        steps: Adam steps (default 200).
        step_size: Adam's learning rate, in pixels (default 0.01).
        targeted: move towards ``target`` instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.

    Shape:
        x: (N, C, H, W) images inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import StAdv
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> found = StAdv(steps=20).flow_field(model, x, model(x).argmax(1))
        >>> found.flow.shape, found.flow_loss.shape
        (torch.Size([2, 2, 4, 4]), torch.Size([2]))

    """

    supported_norms = NORMS
    requires_eps = False

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        tau: float = 0.05,
        kappa: float = 0.0,
        steps: int = 200,
        step_size: float = 0.01,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.tau = check_real(tau, "tau", minimum=0.0)
        self.kappa = check_real(kappa, "kappa", minimum=0.0)
        self.steps = check_int(steps, "steps")
        self.step_size = check_real(step_size, "step_size", minimum=0.0, exclusive=True)

    def flow_field(
        self,
        model: Callable[[Tensor], Tensor],
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
    ) -> FlowResult:
        """The flow this attack finds for ``x``, with its flow loss (no cap applied).

        Args:
            model: maps images (N, C, H, W) to logits (N, C').
            x: images inside ``bounds``.
            y: true labels (N,).
            target: target labels (N,) when the attack is targeted.

        Returns:
            :class:`FlowResult`; its ``x_adv`` is what the attack returns without ``eps``.

        """
        with self._session(model, x, y, target, needs_eps=False) as session:
            flow = self._search(session.model, session.x, session.y, session.target)
            x_adv = apply_flow(session.x, flow).clamp(*self.bounds)
            with torch.no_grad():
                success = is_adversarial(session.model.model(x_adv), session.y, session.target)
        return FlowResult(flow=flow, flow_loss=flow_loss(flow), x_adv=x_adv, success=success)

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """The moved images of the best flows, fitted in the cap ``eps`` if there is one."""
        x_adv = apply_flow(x, self._search(model, x, y, target)).clamp(*self.bounds)
        if self.eps is None:
            return x_adv
        with torch.no_grad():
            rows = is_adversarial(model(x_adv), y, target).nonzero()[:, 0]
        if rows.numel():
            x_adv[rows] = fit_in_cap(
                model,
                x[rows],
                x_adv[rows],
                y[rows],
                None if target is None else target[rows],
                eps=self.eps,
                norm=self.norm,
                bounds=self.bounds,
            )
        return x_adv

    def _search(self, model: CountingModel, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """(N, 2, H, W): per sample the adversarial flow of least flow loss, else zero."""
        if x.ndim != 4:
            raise InvalidArgumentError(
                f"x must be images of shape (N, C, H, W) for StAdv, got shape {tuple(x.shape)}"
            )
        n, _, h, w = x.shape
        flow = torch.zeros((n, 2, h, w), dtype=x.dtype, device=x.device, requires_grad=True)
        best = torch.zeros_like(flow, requires_grad=False)
        best_loss = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
        optimiser = torch.optim.Adam([flow], lr=self.step_size)
        for step in range(self.steps + 1):
            logits = model(apply_flow(x, flow).clamp(*self.bounds))
            smoothness = flow_loss(flow)
            with torch.no_grad():
                better = is_adversarial(logits, y, target) & (smoothness < best_loss)
                best[better] = flow[better]
                best_loss = torch.where(better, smoothness, best_loss)
            if step == self.steps:
                break
            adversarial = (-margin(logits, y, target)).clamp_min(-self.kappa)
            optimiser.zero_grad()
            (adversarial + self.tau * smoothness).sum().backward()
            optimiser.step()
        return best
