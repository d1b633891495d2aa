"""The Jacobian saliency map attack (JSMA): change a few features, two at a time."""

from __future__ import annotations

import torch
from torch import Tensor

from vulnscope._validation import check_choice, check_fraction, check_real
from vulnscope.attacks.base import Attack
from vulnscope.attacks.counting import CountingModel
from vulnscope.errors import InvalidArgumentError

__all__ = ["JSMA", "saliency_pairs"]

_PAIRS_PER_CHUNK = 1 << 22
"""Feature pairs scored at once (bounds the (n, D, D) saliency tensors' memory)."""


def saliency_pairs(
    target_grad: Tensor, other_grad: Tensor, free: Tensor, *, increase: bool
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The pair of features the saliency map of Papernot et al. (2016) picks, per sample.

    For a pair :math:`(p, q)` of distinct free features,
    :math:`\alpha = \sum_{i \in \{p, q\}} \partial F_t / \partial x_i` and
    :math:`\beta = \sum_{i \in \{p, q\}} \sum_{j \ne t} \partial F_j / \partial x_i`.
    Increasing features: the pair with :math:`\alpha > 0`, :math:`\beta < 0` that maximises
    :math:`\alpha |\beta|`; decreasing features: :math:`\alpha < 0`, :math:`\beta > 0`,
    maximising :math:`|\alpha| \beta`. Ties go to the first pair in row-major order.

    Args:
        target_grad: (n, D) derivatives of the target's output, :math:`\partial F_t / \partial x`.
        other_grad: (n, D) derivatives of the sum of the other outputs.
        free: (n, D) bool, the features that may still be changed.
        increase: whether the features are increased (``theta > 0``).

    Returns:
        ``(first, second, found)``: (n,) indices ``first < second`` of the chosen pair, and
        whether a pair meets the sign conditions (where not, the indices are meaningless).

    """
    n, dim = target_grad.shape
    upper = torch.ones(dim, dim, dtype=torch.bool, device=free.device).triu(1)
    best = torch.empty(n, dtype=torch.long, device=free.device)
    found = torch.empty(n, dtype=torch.bool, device=free.device)
    chunk = max(1, _PAIRS_PER_CHUNK // max(dim * dim, 1))
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        a, b, ok = target_grad[rows], other_grad[rows], free[rows]
        alpha = a[:, :, None] + a[:, None, :]
        beta = b[:, :, None] + b[:, None, :]
        signs = (alpha > 0) & (beta < 0) if increase else (alpha < 0) & (beta > 0)
        allowed = signs & ok[:, :, None] & ok[:, None, :] & upper
        score = torch.where(allowed, -alpha * beta, -torch.inf).flatten(1)
        top = score.max(dim=1)
        best[rows], found[rows] = top.indices, top.values > -torch.inf
    return best // dim, best % dim, found


class JSMA(Attack):
    r"""The Jacobian saliency map attack: raise (or lower) two salient features per step.

    Papernot, McDaniel, Jha, Fredrikson, Celik and Swami (2016), "The limitations of deep
    learning in adversarial settings" (IEEE EuroS&P). An L0 attack, targeted at heart:
    each step computes the forward derivative of the outputs, picks the pair of features
    the saliency map ranks first (:func:`saliency_pairs`: the target's output rises and
    the others' fall together), adds ``theta`` to both, clipped to the bounds, and removes
    them from the search: a feature is changed at most once, and features already
    saturated (at the upper bound for ``theta > 0``, the lower for ``theta < 0``) are never
    chosen. A sample stops when the model predicts the target, after
    ``floor(gamma * D / 2)`` pairs (so at most ``gamma * D`` features change), or when no
    pair meets the sign conditions.

    ``jacobian="logits"`` (default) differentiates the logits, the variant Carlini and
    Wagner (2017) call JSMA-Z; ``"softmax"`` differentiates the probabilities, the paper's
    original form (JSMA-F), whose outputs sum to one so that ``β = -α`` and the map
    reduces to ``α²`` with ``α`` of the sign of ``theta``. Only two vector-Jacobian products
    per step are needed, whatever the number of classes: one for the target's output and
    one for the sum of all outputs (one for the softmax).

    Untargeted (``targeted=False``, the default): each sample is attacked towards the
    runner-up class at the clean input (the class with the second-largest logit), and
    stops as soon as the model predicts any class other than ``y``.

    Like a minimal attack, it returns ``x`` unchanged where it fails, and where the model
    already gives the wrong class (untargeted) or the target (targeted). ``norms`` are L0
    norms (the number of changed features) and ``changed_fraction`` the fraction.

    Args:
        theta: change added to each chosen feature, nonzero; negative lowers features.
        gamma: largest fraction of the features the attack may change, in (0, 1].
        jacobian: ``"logits"`` (JSMA-Z) or ``"softmax"`` (JSMA-F).
        targeted: move towards ``target`` (the paper's form) instead of away from ``y``.
        bounds: input bounds, default ``(0, 1)``.

    Shape:
        x: (N, ...) floating, inside ``bounds``; y, target: (N,) int64.

    Example:
        >>> import torch
        >>> from vulnscope.attacks import JSMA
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
        >>> x, y = torch.full((2, 1, 4, 4), 0.5), torch.tensor([0, 1])
        >>> res = JSMA(gamma=0.5)(model, x, y)
        >>> bool((res.changed_fraction <= 0.5).all())
        True

    """

    supported_norms = ("l0",)
    requires_eps = False

    def __init__(
        self,
        *,
        theta: float = 1.0,
        gamma: float = 0.1,
        jacobian: str = "logits",
        targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__(norm="l0", eps=None, targeted=targeted, bounds=bounds, seed=None)
        self.theta = check_real(theta, "theta")
        if self.theta == 0.0:
            raise InvalidArgumentError("theta must be nonzero (> 0 raises features), got 0.0")
        self.gamma = check_fraction(gamma, "gamma")
        self.jacobian = check_choice(jacobian, "jacobian", ("logits", "softmax"))

    def run(
        self,
        model: CountingModel,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Greedy pairs until the target (see the class docstring)."""
        n, shape = x.shape[0], x.shape[1:]
        flat = x.reshape(n, -1)
        # rounded first, so that e.g. 0.58 * 100 = 57.99999999999999 allows 29 pairs
        pairs = int(round(self.gamma * flat.shape[1], 9)) // 2
        result = flat.clone()
        if pairs == 0:
            return x.clone()
        low, high = self.bounds
        increase = self.theta > 0
        current = flat.clone()
        free = current < high if increase else current > low
        index = torch.arange(n, device=x.device)
        goal = target
        for step in range(pairs + 1):
            inputs = current.detach().requires_grad_(True)
            logits = model(inputs.reshape(-1, *shape))
            if goal is None:
                goal = logits.detach().topk(2, dim=1).indices[:, 1]
            predicted = logits.detach().argmax(dim=1)
            done = predicted == goal if target is not None else predicted != y
            result[index[done]] = current[done]
            if step == pairs:
                break
            # One backward pass through the whole batch: the graph holds the finished rows too.
            target_grad, other_grad = self._derivatives(logits, inputs, goal)
            going = (~done).nonzero()[:, 0]
            index, current, free, goal, y = (t[going] for t in (index, current, free, goal, y))
            first, second, found = saliency_pairs(
                target_grad[going], other_grad[going], free, increase=increase
            )
            if not bool(found.any()):
                break
            if not bool(found.all()):  # no salient pair left: the sample has failed
                index, current, free, goal, y = (t[found] for t in (index, current, free, goal, y))
                first, second = first[found], second[found]
            rows = torch.arange(index.numel(), device=x.device)
            for feature in (first, second):
                moved = current[rows, feature] + self.theta
                current[rows, feature] = moved.clamp(low, high)
                free[rows, feature] = False
        return result.reshape(x.shape)

    def _derivatives(self, logits: Tensor, inputs: Tensor, goal: Tensor) -> tuple[Tensor, Tensor]:
        """(n, D) derivatives of the goal's output and of the sum of the other outputs."""
        one_hot = torch.nn.functional.one_hot(goal, logits.shape[1]).to(logits.dtype)
        if self.jacobian == "softmax":
            # d p_t / d z = p_t (e_t - p); the other probabilities sum to 1 - p_t.
            probs = torch.softmax(logits.detach(), dim=1)
            cotangent = probs.gather(1, goal[:, None]) * (one_hot - probs)
            (target_grad,) = torch.autograd.grad(logits, inputs, cotangent)
            return target_grad, -target_grad
        (target_grad,) = torch.autograd.grad(logits, inputs, one_hot, retain_graph=True)
        (other_grad,) = torch.autograd.grad(logits, inputs, 1.0 - one_hot)
        return target_grad, other_grad
