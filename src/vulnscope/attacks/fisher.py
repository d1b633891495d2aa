"""The one-step spectral attack along the top eigenvector of the input Fisher information."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vulnscope._validation import check_bool, check_int
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.attacks.losses import cross_entropy, is_adversarial
from vulnscope.diagnostics.distance import line_search_class_change, model_classifier
from vulnscope.diagnostics.fisher import fisher_eigenpairs
from vulnscope.errors import InvalidArgumentError

__all__ = ["FisherAttack"]


class FisherAttack(Attack):
    r"""Move along the top eigenvector ``v_1`` of the input Fisher information.

    Zhao, Liu, Wang and Lu (2019), "The adversarial attack and detection under the Fisher
    information metric" (AAAI): ``F(x) = Jᵀ (diag p - p pᵀ) J`` is the metric of the KL
    divergence between the model's predictions at ``x`` and ``x + δ``, so ``v_1`` is the
    direction in which a small step changes the prediction most; it is also the dangerous
    direction that the RG analysis of a deep network points to (Kenway 2018). ``v_1`` has no
    sign: of ``x ± eps v_1`` the attack keeps the one that is adversarial, else the one with
    the larger loss. With ``norm="linf"`` the step is ``eps · sign(v_1)``, the corner of the
    L∞ ball most aligned with ``v_1``.

    With ``minimal=True`` it instead searches along both signs for the smallest step that
    changes the class (a grid of ``search_steps`` then ``refine`` bisections, up to ``eps``
    or, without ``eps``, the whole box), and returns ``x`` unchanged where none exists.
    Deterministic: ``v_1`` comes from C vector-Jacobian products and a C x C eigenproblem.

    Args:
        norm: ``"l2"`` (default) or ``"linf"``.
        eps: step size (``minimal=False``) or largest step searched (``minimal=True``).
        minimal: find the smallest class-changing step instead of stepping by ``eps``.
        targeted: step towards ``target`` (only with ``minimal=False``).
        bounds: input bounds, default ``(0, 1)``; every point is clipped to them.
        search_steps: grid points of the minimal search.
        refine: bisections of the minimal search.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import FisherAttack
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
        >>> x, y = torch.full((2, 1, 2, 2), 0.5), torch.tensor([0, 1])
        >>> res = FisherAttack(eps=0.3)(model, x, y)
        >>> bool((res.norms <= 0.3 + 1e-6).all())
        True

    """

    supported_norms = ("l2", "linf")

    def __init__(
        self,
        *,
        norm: str = "l2",
        eps: float | None = None,
        minimal: bool = False,
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
        search_steps: int = 24,
        refine: int = 10,
    ) -> None:
        super().__init__(norm=norm, eps=eps, targeted=targeted, bounds=bounds, seed=None)
        self.minimal = check_bool(minimal, "minimal")
        self.search_steps = check_int(search_steps, "search_steps")
        self.refine = check_int(refine, "refine", minimum=0)
        if self.minimal and self.targeted:
            raise InvalidArgumentError(
                "minimal=True searches for the smallest untargeted step; "
                "use minimal=False for a targeted attack"
            )
        self.requires_eps = not self.minimal

    def _directions(self, model: CountingModel, x: Tensor) -> Tensor:
        """Unit steps along ``v_1`` in the attack's norm: (N, ...)."""
        result = fisher_eigenpairs(model.model, x, 1)
        classes = result.probabilities.shape[1]
        model.record(forward=x.shape[0], gradient=classes * x.shape[0])
        v1 = result.eigenvectors[:, 0]
        return v1.sign() if self.norm == "linf" else v1

    def _step(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        step: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        """The better of ``x ± eps step``, and whether it is adversarial."""
        candidates = torch.cat([x + eps * step, x - eps * step]).clamp(*self.bounds)
        with torch.no_grad():
            logits = model(candidates)
        labels = torch.cat([y, y])
        targets = None if target is None else torch.cat([target, target])
        success = is_adversarial(logits, labels, targets).reshape(2, -1)
        loss = cross_entropy(logits, labels, targets).reshape(2, -1)
        score = torch.where(success, math.inf, loss)
        pick = (score[1] > score[0]).long()
        chosen = candidates.reshape(2, *x.shape)[pick, torch.arange(x.shape[0])]
        return chosen, success[pick, torch.arange(x.shape[0])]

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Step along ``±v_1`` (see the class docstring)."""
        step = self._directions(model, x)
        if not self.minimal:
            return self._step(model, x, y, target, step, self.budget())[0]
        low, high = self.bounds
        n = x[0].numel()
        reach = (high - low) * (math.sqrt(n) if self.norm == "l2" else 1.0)
        flat, unit = x.flatten(1), step.flatten(1)
        with torch.no_grad():
            already = model(x).argmax(1) != y
        distance = line_search_class_change(
            model_classifier(model, x.shape[1:]),
            flat,
            torch.stack([unit, -unit], 1),
            max_step=self.eps if self.eps is not None else reach,
            steps=self.search_steps,
            refine=self.refine,
            bounds=self.bounds,
        )
        best, sign = distance.min(1)
        signs = torch.where(sign == 0, 1.0, -1.0).to(x.dtype)
        moved = flat + (best[:, None].to(x.dtype) * signs[:, None]) * unit
        keep = already | ~torch.isfinite(best)
        return torch.where(keep[:, None], flat, moved.clamp(*self.bounds)).view_as(x)

    def run_curve(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        epsilons: list[float],
        generator: torch.Generator,
    ) -> Tensor | None:
        """All budgets from one ``v_1``: success at ``eps`` or any smaller budget."""
        if self.minimal:
            return None
        step = self._directions(model, x)
        broken = torch.stack([self._step(model, x, y, None, step, eps)[1] for eps in epsilons])
        return broken.cummax(0).values
