"""Exact verification: attacks falsify, CROWN verifies, a complete solver decides the rest.

A point is *verified* when no input of its threat set (the norm ball intersected with the
input box) is classified otherwise than its label, *falsified* when one is found (and
checked), *unknown* otherwise, with the reason. :func:`verify` asks the cheap questions
first, as Tjeng, Xiao and Tedrake (2019) do: an attack
(APGD-CE, the first of AutoAttack's cascade) looks for counterexamples, CROWN
(:func:`~vulnscope.certify.certify`) certifies, and only the points neither decides go to
a complete solver: the mixed-integer program of Tjeng et al. (:mod:`.milp`) or the SMT
formula of Huang, Kwiatkowska, Wang and Wu (2017) (:mod:`.smt`). Both are exact for L∞,
whose threat set is a box; the L2 ball is a quadratic constraint neither holds, so for
L2 the attack and the certificate answer alone.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vulnscope._validation import (
    check_bounds,
    check_choice,
    check_inputs,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_model_matches_inputs,
    check_norm,
    check_real,
    check_seed,
)
from vulnscope.attacks import APGD
from vulnscope.certify import milp, smt
from vulnscope.certify.certificate import certify
from vulnscope.certify.counterexamples import check_counterexamples
from vulnscope.certify.exact import Solver, Status, solve_points, unsupported_node
from vulnscope.certify.graph import read_graph
from vulnscope.errors import InvalidTypeError
from vulnscope.models.state import preserved_model_state

__all__ = ["SOLVERS", "Status", "Verification", "verify"]

logger = logging.getLogger(__name__)

SOLVERS: dict[str, tuple[Solver, Mapping[type, object]]] = {
    "milp": (milp.solve_point, milp.ENCODERS),
    "smt": (smt.solve_point, smt.ENCODERS),
}
"""The complete solvers, by the name ``method=`` takes, with the operators they encode."""

_L2_REASON = (
    "neither the attack nor the CROWN certificate decided it, and the L2 ball is a "
    "quadratic constraint that the exact solvers cannot hold"
)


@dataclass(frozen=True)
class Verification:
    """The verdict on each point of a batch.

    Attributes:
        status: (N,) per point ``"verified"``, ``"falsified"`` or ``"unknown"``.
        reasons: (N,) per point why it is ``"unknown"``; ``""`` for a decided point.
        counterexamples: (N, *in) for each falsified point an input inside the ball and
            the box that a plain forward pass of the model misclassifies; NaN elsewhere.
        seconds: (N,) wall time per point: its share of the batched attack and
            certificate, plus its own solver time.
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius.
        method: the complete solver, ``"milp"`` or ``"smt"``.

    """

    status: tuple[Status, ...]
    reasons: tuple[str, ...]
    counterexamples: Tensor
    seconds: tuple[float, ...]
    norm: str
    eps: float
    method: str

    @property
    def verified(self) -> Tensor:
        """(N,) bool: the points proved robust."""
        return torch.tensor([s == "verified" for s in self.status], dtype=torch.bool)

    @property
    def falsified(self) -> Tensor:
        """(N,) bool: the points with a checked counterexample."""
        return torch.tensor([s == "falsified" for s in self.status], dtype=torch.bool)

    @property
    def decided(self) -> Tensor:
        """(N,) bool: the points verified or falsified."""
        return torch.tensor([s != "unknown" for s in self.status], dtype=torch.bool)


def verify(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    norm: str = "linf",
    eps: float,
    time_limit: float = 30.0,
    method: str = "milp",
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> Verification:
    """Decide, for each point, whether some input of its threat set is misclassified.

    In order, each stage on the points the stages before it left undecided:

    1. APGD-CE, the first stage of the evaluation cascade (Croce and Hein 2020), looks
       for counterexamples (a clean mistake is its own counterexample);
    2. CROWN (Zhang et al. 2018) verifies the points it certifies;
    3. (L∞ only) the complete solver: the MILP of Tjeng et al. (2019), only for the
       classes whose CROWN margin bound is not positive, or the SMT formula of Huang et
       al. (2017). A point whose network has a layer the solvers do not encode (a smooth
       or leaky activation) stays unknown, the layer named in its reason.

    Every counterexample is checked before it is returned: inside the ball and the box,
    and misclassified (``argmax != label``) by a plain forward pass of ``model``. The
    solvers work on a float64 copy of the network, in exact (SMT) or tolerance-bounded
    (MILP, margins proved above ``1e-6``) arithmetic: a verdict is about the real-valued
    network, not its float32 rounding.

    Args:
        model: a classifier in eval mode returning logits (N, C), readable by
            :func:`~vulnscope.certify.graph.read_graph`.
        inputs: points (N, *in) inside ``bounds``.
        labels: their classes (N,), int64.
        norm: ``"linf"`` or ``"l2"``.
        eps: the radius, > 0.
        time_limit: solver seconds per point, shared among the classes it must beat.
        method: the complete solver: ``"milp"`` (HiGHS, through
            :func:`scipy.optimize.milp`) or ``"smt"`` (z3: ``pip install 'vulnscope[smt]'``).
        bounds: the input box.
        seed: seed of the attack.

    Returns:
        A :class:`Verification`.

    Raises:
        InvalidArgumentError: a bad argument, inputs outside ``bounds``, or
            ``method="smt"`` without z3 installed.
        ModelError: a model :func:`~vulnscope.certify.graph.read_graph` cannot read.

    Example:
        >>> import torch
        >>> from vulnscope.certify import verify
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)
        ... ).eval()
        >>> x = torch.rand(3, 2)
        >>> result = verify(model, x, model(x).argmax(1), eps=0.05, time_limit=5.0)
        >>> len(result.status), result.counterexamples.shape
        (3, torch.Size([3, 2]))

    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(
            f"model must be a torch.nn.Module (verify reads its layers), got {type(model).__name__}"
        )
    norm = check_norm(norm, allowed=("linf", "l2"))
    eps = check_real(eps, "eps", minimum=0.0, exclusive=True)
    time_limit = check_real(time_limit, "time_limit", minimum=0.0, exclusive=True)
    method = check_choice(method, "method", tuple(SOLVERS))
    bounds = check_bounds(bounds)
    x = check_inputs(inputs, bounds=bounds, name="inputs")
    y = check_labels(labels, n=x.shape[0], device=x.device, name="labels")
    check_model_matches_inputs(model, x)
    seed = check_seed(seed) or 0
    if method == "smt":
        smt.load_z3()  # a missing optional solver is one clear error, before any work
    with preserved_model_state(model), torch.no_grad():
        logits = check_logits(model(x), x.shape[0])
    check_labels_in_range(y, logits.shape[1], "labels")
    # the solvers' network, in float64; an unreadable model fails here, before the attack
    graph = read_graph(copy.deepcopy(model).double().eval(), x.double())

    started = time.perf_counter()
    verdicts = _Verdicts(model, x, y, norm=norm, eps=eps, bounds=bounds)
    with warnings.catch_warnings():  # a softmax model was told once, at the boundary
        warnings.filterwarnings("ignore", message="the model's outputs look like probabilities")
        attack = APGD(norm=norm, eps=eps, loss="ce", seed=seed, bounds=bounds)(model, x, y)
    broken = attack.success.nonzero()[:, 0].tolist()
    verdicts.falsify(broken, attack.x_adv[broken])  # a candidate failing the check proves nothing
    rest = verdicts.undecided()
    if rest:
        certified = certify(
            model, x[rest], y[rest], norm=norm, eps=eps, method="crown", bounds=bounds
        ).certified
        for i in torch.tensor(rest)[certified.cpu()].tolist():
            verdicts.status[i] = "verified"
    shared = (time.perf_counter() - started) / x.shape[0]
    verdicts.seconds = [shared] * x.shape[0]
    rest = verdicts.undecided()
    solve, encoders = SOLVERS[method]
    why = _L2_REASON if norm == "l2" else unsupported_node(graph, encoders)
    if why:
        for i in rest:
            verdicts.reasons[i] = why
        rest = []
    points = solve_points(
        solve, graph, x[rest].double(), y[rest], eps=eps, bounds=bounds, time_limit=time_limit
    )
    for i, (outcome, seconds) in zip(rest, points, strict=True):
        verdicts.seconds[i] += seconds
        if outcome.status == "falsified" and outcome.counterexample is not None:
            candidate = torch.from_numpy(outcome.counterexample).reshape(x.shape[1:])
            if verdicts.falsify([i], candidate[None]):
                verdicts.reasons[i] = (
                    f"the {method.upper()} solver found an input whose margin is within "
                    "rounding of zero, but a forward pass of the model classifies it correctly"
                )
        else:
            verdicts.status[i], verdicts.reasons[i] = outcome.status, outcome.reason
        logger.debug("point %d: %s %s", i, verdicts.status[i], verdicts.reasons[i])
    return Verification(
        status=tuple(verdicts.status),
        reasons=tuple(verdicts.reasons),
        counterexamples=verdicts.found,
        seconds=tuple(verdicts.seconds),
        norm=norm,
        eps=eps,
        method=method,
    )


class _Verdicts:
    """The verdicts of a batch as the stages fill them in; counterexamples checked first."""

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        norm: str,
        eps: float,
        bounds: tuple[float, float],
    ) -> None:
        self.model, self.x, self.y = model, x, y
        self.norm, self.eps, self.bounds = norm, eps, bounds
        self.status: list[Status] = ["unknown"] * x.shape[0]
        self.reasons = [""] * x.shape[0]
        self.found = torch.full_like(x, float("nan"))
        self.seconds = [0.0] * x.shape[0]

    def undecided(self) -> list[int]:
        """The points no stage decided or explained yet."""
        return [i for i, s in enumerate(self.status) if s == "unknown" and not self.reasons[i]]

    def falsify(self, rows: Sequence[int], candidates: Tensor) -> list[int]:
        """Mark ``rows`` falsified where their candidates pass the check; return the others."""
        if not rows:
            return []
        index = torch.tensor(list(rows), device=self.x.device)
        moved, wrong = check_counterexamples(
            self.model,
            self.x[index],
            self.y[index],
            candidates.to(self.x.device),
            norm=self.norm,
            eps=self.eps,
            bounds=self.bounds,
        )
        failed = []
        for k, i in enumerate(rows):
            if bool(wrong[k]):
                self.status[i], self.found[i] = "falsified", moved[k]
            else:
                failed.append(i)
        return failed
