"""The audit's budgets when none are given: conventional for named data, and from the model.

Each norm's budgets are, in this order of precedence:

1. **given** by the user: they always win, and nothing is measured;
2. **conventional** when the data names a data set whose published evaluations use fixed
   budgets (:data:`CONVENTIONAL_BUDGETS`: the embedded digits, MNIST, Fashion-MNIST,
   CIFAR-10), so that the curve compares with the literature; apart from the digits
   (whose budgets were chosen for its models), the budgets measured as below are added,
   so that the curve also spans this model's transition (an undefended Fashion-MNIST CNN
   is broken everywhere at MNIST's L∞ 0.1/0.2/0.3, a robust MNIST model robust at the
   digits' 0.05/0.1/0.2);
3. **from minimal perturbations**: DeepFool (Moosavi-Dezfooli, Fawzi and Frossard 2016) in
   that norm on a seeded sample of at most :data:`BUDGET_POINTS` correctly classified
   points gives each one's minimal perturbation; the budgets are three quantiles of those
   sizes (:data:`QUANTILES`: mostly robust, half, mostly broken) scaled by
   :data:`DEEPFOOL_SCALE`, rounded to readable values (multiples of 1/255 for 8-bit data);
4. **default** (:data:`DEFAULT_EPSILONS`, the digits' budgets) for data that names no set
   when DeepFool finds no adversarial example for more than half of the sampled points,
   none is classified correctly, or DeepFool cannot run on the model: its sizes say
   nothing then.

The choice is deterministic given the model, the data and the seed (it is part of a
checkpoint's identity), and :class:`BudgetChoice` says for each norm how it was made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vulnscope._random import make_generator
from vulnscope._validation import check_epsilons
from vulnscope.attacks import DeepFool
from vulnscope.data import known_dataset
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError

__all__ = [
    "BUDGET_POINTS",
    "CONVENTIONAL_BUDGETS",
    "DEEPFOOL_SCALE",
    "DEFAULT_EPSILONS",
    "QUANTILES",
    "BudgetChoice",
    "NormBudgets",
    "budget_label",
    "check_budgets",
    "choose_budgets",
    "is_eight_bit",
    "readable_budgets",
]

logger = logging.getLogger(__name__)

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.05, 0.1, 0.2),
    "l2": (0.25, 0.5, 1.0),
}
"""The embedded 8x8 digits' budgets (inputs in [0, 1]), and the fallback for any data:
from where most of an undefended model's points survive to where few do."""

CONVENTIONAL_BUDGETS: dict[str, tuple[str, dict[str, tuple[float, ...]]]] = {
    "digits": ("the embedded digits", DEFAULT_EPSILONS),
    "mnist": ("MNIST", {"linf": (0.1, 0.2, 0.3), "l2": (1.0, 2.0, 3.0)}),
    "fashion-mnist": ("Fashion-MNIST, as MNIST", {"linf": (0.1, 0.2, 0.3), "l2": (1.0, 2.0, 3.0)}),
    "cifar10": ("CIFAR-10", {"linf": (2 / 255, 4 / 255, 8 / 255), "l2": (0.25, 0.5, 1.0)}),
}
"""By data set (the digits' ``source``, or :func:`vulnscope.data.known_dataset`'s name): its
name in reports and its budgets per norm, on the scales published evaluations use: MNIST
up to L∞ 0.3 (Madry et al. 2018), CIFAR-10 up to L∞ 8/255 and around L2 0.5 (RobustBench;
Croce et al. 2021). Fashion-MNIST takes MNIST's: same size, same pixel range."""

_CHOSEN_FROM_ITS_MODELS = {"digits"}
"""Data sets whose conventional budgets were chosen from the transitions of the models
trained on them, so that DeepFool has little to add: on the 397 test digits it picks L∞
0.05/0.1/0.15 and L2 0.25/0.5/0.8 for the digits CNN, 0.03/0.08/0.15 and 0.2/0.4/0.6 for
the MLP."""

_SAME_BUDGET = 0.1
"""A measured budget within this relative distance of a conventional one adds nothing."""

BUDGET_POINTS = 200
"""Most correctly classified points DeepFool runs on to choose the budgets."""

QUANTILES = (0.15, 0.5, 0.85)
"""The quantiles of the minimal perturbations that become the budgets: 85% of the correct
points survive the first (before rounding), half the second, 15% the last."""

DEEPFOOL_SCALE = 0.95
"""What DeepFool's sizes are multiplied by to estimate the true minimal perturbations.

DeepFool overshoots the boundary; with its bisection back to the boundary the overshoot is
small. ``benchmarks/budgets.py`` measures, at the quantiles 0.15 to 0.85 of DeepFool's
sizes, the budget at which the cascade (APGD-CE, APGD-T) leaves as many points robust,
divided by DeepFool's size: 0.93-0.98 (L∞) and 0.93-0.99 (L2) on the digits CNN,
0.99-1.03 and 0.97-1.02 on the digits MLP, 0.92-0.99 and 0.92-0.98 on a Fashion-MNIST
CNN; 0.95 sits at the low end, as a model DeepFool reads less well would push it lower."""

_LADDER = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
"""Readable mantissas (1-2 significant figures): neighbours at most 1.5x apart."""

_EIGHT_BIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class NormBudgets:
    """One norm's budgets and how they were chosen.

    Attributes:
        epsilons: the budgets, as the audit runs them.
        how: ``"given"``, ``"conventional (MNIST)"``, ``"from minimal perturbations
            (DeepFool on N points; ...)"`` or ``"default (fallback: ...)"``.
        labels: how reports show each budget (:func:`budget_label`: ``"0.1"``, ``"8/255"``).

    """

    epsilons: list[float]
    how: str
    labels: list[str]


@dataclass(frozen=True)
class BudgetChoice:
    """The budgets of both norms and how each was chosen (the record's ``settings.budgets``)."""

    linf: NormBudgets
    l2: NormBudgets

    def __getitem__(self, norm: str) -> NormBudgets:
        """The budgets of ``norm`` (``"linf"`` or ``"l2"``)."""
        return {"linf": self.linf, "l2": self.l2}[norm]

    @property
    def epsilons(self) -> dict[str, list[float]]:
        """The budgets per norm."""
        return {"linf": list(self.linf.epsilons), "l2": list(self.l2.epsilons)}


def check_budgets(epsilons: Mapping[str, Sequence[float]] | None) -> dict[str, list[float]]:
    """The budgets the user gave, checked, by norm (the norms not given are left out)."""
    given = dict(epsilons or {})
    unknown = [norm for norm in given if norm not in DEFAULT_EPSILONS]
    if unknown:
        raise InvalidArgumentError(
            f"epsilons: expected budgets for 'linf' and/or 'l2', got a key {unknown[0]!r}"
        )
    return {
        norm: check_epsilons(list(given[norm]), f"epsilons[{norm!r}]")
        for norm in DEFAULT_EPSILONS
        if norm in given
    }


def is_eight_bit(x: Tensor) -> bool:
    """Whether every value of ``x`` is a multiple of 1/255 (within 1e-4 of one): 8-bit data."""
    scaled = x.detach().double() * 255
    return bool(((scaled - scaled.round()).abs() <= _EIGHT_BIT_TOLERANCE).all())


def readable_budgets(sizes: Sequence[float], *, eight_bit: bool = False) -> list[float]:
    """Three sizes rounded to readable, strictly increasing budgets.

    The first is rounded down and the last up (so that the first stays mostly robust and
    the last mostly broken), the middle to the nearest; each then moves up to the next
    readable value above the one before, if it is not above it already. Readable values
    are ``m * 10**k`` with ``m`` in 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, or multiples of 1/255
    when ``eight_bit`` (at least 1/255).

    Args:
        sizes: three positive sizes, increasing.
        eight_bit: round to multiples of 1/255.

    Returns:
        The three budgets.

    Example:
        >>> readable_budgets([0.053, 0.1024, 0.149])
        [0.05, 0.1, 0.15]
        >>> [round(b * 255) for b in readable_budgets([0.011, 0.02, 0.03], eight_bit=True)]
        [2, 5, 8]

    """
    low, middle, high = (max(float(size), 1e-12) for size in sizes)
    if eight_bit:
        steps = [max(1, math.floor(low * 255)), max(1, round(middle * 255)), math.ceil(high * 255)]
        for index in (1, 2):
            steps[index] = max(steps[index], steps[index - 1] + 1)
        return [step / 255 for step in steps]
    budgets = [_ladder(low, "down"), _ladder(middle, "nearest"), _ladder(high, "up")]
    for index in (1, 2):
        if budgets[index] <= budgets[index - 1]:
            budgets[index] = _ladder(budgets[index - 1] * (1 + 1e-6), "up")
    return budgets


def _ladder(value: float, direction: str) -> float:
    """``value`` rounded ``"down"``, ``"up"`` or to the ``"nearest"`` (in ratio) readable value."""
    decade = 10.0 ** math.floor(math.log10(value))
    candidates = [float(f"{mantissa * decade:.2g}") for mantissa in (*_LADDER, 10.0)]
    below = max(c for c in candidates if c <= value * (1 + 1e-9))
    above = min(c for c in candidates if c >= value * (1 - 1e-9))
    if direction == "down":
        return below
    if direction == "up":
        return above
    return below if value / below <= above / value else above


def _dataset(source: str) -> str | None:
    """The key of :data:`CONVENTIONAL_BUDGETS` that ``source`` names, if any."""
    if source == "digits" or source.startswith("digits:"):  # the embedded set, any split
        return "digits"
    return known_dataset(source)


def budget_label(eps: float) -> str:
    """A budget for reading: ``"k/255"`` when it is k/255 with a long decimal, else ``f"{eps:g}"``.

    Example:
        >>> budget_label(8 / 255), budget_label(0.2), budget_label(0.0313725)
        ('8/255', '0.2', '0.0313725')

    """
    steps = eps * 255
    whole = round(steps)
    if whole > 0 and abs(steps - whole) <= 1e-9 * steps and len(f"{eps:g}") > 6:
        return f"{whole}/255"
    return f"{eps:g}"


def _labels(epsilons: Sequence[float]) -> list[str]:
    return [budget_label(eps) for eps in epsilons]


def choose_budgets(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    epsilons: Mapping[str, Sequence[float]] | None,
    *,
    seed: int,
    device: torch.device,
    points: int = BUDGET_POINTS,
    measure: Collection[str] = ("linf", "l2"),
) -> BudgetChoice:
    """Each norm's budgets: given, conventional for the data, and from the model's data.

    See the module docstring for the order. The minimal perturbations are DeepFool's in
    each norm (all classes as candidates up to 10, then the 10 most likely, as Foolbox),
    on the first ``points`` correctly classified samples of a permutation of ``data``
    drawn from ``seed``.

    Args:
        model: the classifier, (N, ...) -> logits (N, C), on ``device``.
        data: the samples (inputs in [0, 1]).
        epsilons: the budgets the user gave, by norm (``None``: none).
        seed: seed of the sample.
        device: where the model runs.
        points: most correctly classified samples DeepFool runs on.
        measure: the norms DeepFool may run for (those of the stages that run); another
            norm not given gets its conventional or :data:`DEFAULT_EPSILONS` budgets.

    Returns:
        :class:`BudgetChoice`.

    Raises:
        InvalidArgumentError: ``epsilons`` names another norm or holds a bad budget.

    """
    given = check_budgets(epsilons)
    known = _dataset(data.source)
    eight_bit = is_eight_bit(data.x)
    chosen: dict[str, NormBudgets] = {}
    sample: tuple[Tensor, Tensor] | None = None
    for norm in DEFAULT_EPSILONS:
        if norm in given:
            chosen[norm] = NormBudgets(given[norm], "given", _labels(given[norm]))
            continue
        conventional = None
        if known is not None:
            name, budgets = CONVENTIONAL_BUDGETS[known]
            conventional = NormBudgets(
                list(budgets[norm]), f"conventional ({name})", _labels(budgets[norm])
            )
        if conventional is not None and (known in _CHOSEN_FROM_ITS_MODELS or norm not in measure):
            chosen[norm] = conventional
            continue
        if norm not in measure:
            values = list(DEFAULT_EPSILONS[norm])
            chosen[norm] = NormBudgets(
                values, "default (no stage runs at these budgets)", _labels(values)
            )
            continue
        if sample is None:
            sample = _correct_sample(model, data, seed=seed, device=device, points=points)
        measured = _from_minimal_perturbations(
            model, *sample, norm=norm, eight_bit=eight_bit and norm == "linf"
        )
        chosen[norm] = _combined(conventional, measured, norm)
        logger.info("%s budgets %s", norm, chosen[norm].how)
    return BudgetChoice(linf=chosen["linf"], l2=chosen["l2"])


def _correct_sample(
    model: Callable[[Tensor], Tensor],
    data: ImageData,
    *,
    seed: int,
    device: torch.device,
    points: int,
) -> tuple[Tensor, Tensor]:
    """The first ``points`` correctly classified samples of a seeded permutation of ``data``."""
    order = torch.randperm(len(data), generator=make_generator(seed))
    xs, ys, found = [], [], 0
    for start in range(0, len(order), 2 * points):
        index = order[start : start + 2 * points]
        x, y = data.x[index].to(device), data.y[index].to(device)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        xs.append(x[correct][: points - found])
        ys.append(y[correct][: points - found])
        found += int(xs[-1].shape[0])
        if found >= points:
            break
    return torch.cat(xs), torch.cat(ys)


def _from_minimal_perturbations(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, norm: str, eight_bit: bool
) -> NormBudgets | str:
    """Budgets from DeepFool's sizes on ``x`` (all classified correctly), or why there are none."""
    if x.shape[0] == 0:
        return "the model classifies none of the sampled points correctly"
    with torch.no_grad():
        classes = int(model(x[:1]).shape[1])
    try:
        result = DeepFool(norm=norm, candidates=min(classes, 10))(model, x, y)
    except (RuntimeError, NotImplementedError) as error:  # no input gradient, say
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"DeepFool failed on this model: {cause}"
    sizes = result.norms[result.success].double().cpu()
    total, missed = int(x.shape[0]), int(x.shape[0] - sizes.numel())
    if 2 * missed > total:
        return f"DeepFool found no adversarial example for {missed} of {total} points"
    quantiles = torch.quantile(sizes, torch.tensor(QUANTILES, dtype=torch.float64))
    budgets = readable_budgets((DEEPFOOL_SCALE * quantiles).tolist(), eight_bit=eight_bit)
    shown = "/".join(f"{q:g}" for q in QUANTILES)
    how = (
        f"from minimal perturbations (DeepFool on {total} points; quantiles {shown} of its "
        f"sizes, scaled by {DEEPFOOL_SCALE:g}"
        + (f"; {missed} not found" if missed else "")
        + ("; multiples of 1/255 for 8-bit data" if eight_bit else "")
        + ")"
    )
    return NormBudgets(budgets, how, _labels(budgets))


def _combined(
    conventional: NormBudgets | None, measured: NormBudgets | str, norm: str
) -> NormBudgets:
    """The measured budgets, added to the conventional ones (if any); the fallback if none."""
    if isinstance(measured, str):
        if conventional is not None:
            how = f"{conventional.how}; none added from minimal perturbations: {measured}"
            return NormBudgets(conventional.epsilons, how, conventional.labels)
        fallback = list(DEFAULT_EPSILONS[norm])
        return NormBudgets(fallback, f"default (fallback: {measured})", _labels(fallback))
    if conventional is None:
        return measured
    added = [
        eps
        for eps in measured.epsilons
        if all(abs(eps / other - 1) > _SAME_BUDGET for other in conventional.epsilons)
    ]
    values = sorted([*conventional.epsilons, *added])
    how = (
        f"{conventional.how}; {', '.join(_labels(added))} added {measured.how}"
        if added
        else f"{conventional.how}; nothing new {measured.how}"
    )
    return NormBudgets(values, how, _labels(values))
