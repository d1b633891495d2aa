"""The measurement that decides between output defences: clone damage against distortion.

For one victim, each defence at each budget and each seed (one cell):

1. Legitimate utility on the test inputs a user sends: top-1 agreement of the published
   class with the victim's own class, the mean L1 distance between published and true
   output vectors, and the mean ``KL(published || true)`` (finite even for one-hot
   publications, since the true softmax output is positive).
2. An extraction attack (:func:`vulnscope.cloning.extract`) against the defended victim,
   and the clone's test accuracy, agreement with the victim, and transfer rate of PGD
   examples crafted on it.

Cells are independent and each is written to its own checkpoint file as soon as it is
done, so a long study resumes where it stopped; a rerun whose settings would change a
finished cell is refused, naming the setting (:class:`vulnscope._checkpoint.Checkpoints`).
Over seeds, every figure becomes a mean with a Student-t confidence interval; Fisher
poisoning is compared with the random perturbation by paired differences (the same seed
trains both clones from the same initialisation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vulnscope._checkpoint import Checkpoints, tensor_digest
from vulnscope._statistics import mean_interval
from vulnscope._validation import check_choice
from vulnscope.cloning.defence import OutputDefence, Undefended
from vulnscope.cloning.extraction import extract
from vulnscope.cloning.fisher_poisoning import FisherPoisoning, FisherSearch
from vulnscope.cloning.label_only import LabelOnly
from vulnscope.cloning.mad import MAD
from vulnscope.cloning.random_poisoning import RandomPoisoning
from vulnscope.cloning.reverse import ReverseModel
from vulnscope.cloning.reverse_sigmoid import ReverseSigmoid
from vulnscope.cloning.rounding import Rounding
from vulnscope.errors import InvalidArgumentError
from vulnscope.models.seeded import build_seeded

__all__ = [
    "DEFENCE_NAMES",
    "CloneStudySettings",
    "DefenceSpec",
    "Victim",
    "clone_study",
    "defence_grid",
    "summarise_cells",
]

logger = logging.getLogger(__name__)

DEFENCE_NAMES: tuple[str, ...] = (
    "none",
    "fisher",
    "fisher_eigenvector",
    "random",
    "mad",
    "reverse_sigmoid",
    "rounding",
    "label_only",
)
"""Defences the study knows, in the order of its tables."""

_BUDGETED = ("fisher", "fisher_eigenvector", "random", "mad", "reverse_sigmoid")

Trainer = Callable[[nn.Module, Tensor, Tensor, int], nn.Module]

CLONE_SEED_OFFSET = 1000
"""Added to a cell's seed for the clone: the cached victims were built with seeds 0, 1...,
and a clone of the victim's architecture with the victim's own seed would start from the
victim's initial weights and minibatch order, and come out a near-copy of it."""


@dataclass(frozen=True)
class DefenceSpec:
    """One defence configuration: a name, its L1 budget (if it has one), its parameters."""

    name: str
    budget: float | None = None
    decimals: int | None = None

    @property
    def key(self) -> str:
        """A short identifier, e.g. ``fisher-b0.1`` or ``rounding-d2``."""
        if self.budget is not None:
            return f"{self.name}-b{self.budget:g}"
        if self.decimals is not None:
            return f"{self.name}-d{self.decimals}"
        return self.name


def defence_grid(
    names: Sequence[str], budgets: Sequence[float], *, decimals: Sequence[int] = (1, 2)
) -> list[DefenceSpec]:
    """Every configuration of the named defences: budgeted ones at every budget."""
    specs: list[DefenceSpec] = []
    for name in names:
        check_choice(name, "defence", DEFENCE_NAMES)
        if name in _BUDGETED:
            specs.extend(DefenceSpec(name, budget=float(b)) for b in budgets)
        elif name == "rounding":
            specs.extend(DefenceSpec(name, decimals=int(d)) for d in decimals)
        else:
            specs.append(DefenceSpec(name))
    if not specs:
        raise InvalidArgumentError("defences must name at least one defence, got none")
    return specs


@dataclass
class Victim:
    """A classifier under study and everything its attacker and defender use.

    Attributes:
        name: shown in tables and file names.
        model: the victim (logits out), in eval mode.
        architecture: builds a fresh clone (the attacker's choice of architecture).
        train_x: the defender's training inputs (also the attacker's queries in the
            default threat model: the victim's own distribution).
        test_x, test_y: held-out inputs and labels for utility and clone measurements.
        trainer: how the attacker trains the clone (None: soft cross-entropy).
        reverse: the reverse model of Fisher poisoning (None: the DeepRBM's own
            generation pass).
        transfer_eps: L∞ radius of the PGD examples crafted on the clone.
        queries_x: the attacker's query inputs (default ``train_x``).

    """

    name: str
    model: nn.Module
    architecture: Callable[[], nn.Module]
    train_x: Tensor
    test_x: Tensor
    test_y: Tensor
    trainer: Trainer | None = None
    reverse: ReverseModel | None = None
    transfer_eps: float = 0.1
    queries_x: Tensor | None = None


@dataclass(frozen=True)
class CloneStudySettings:
    """Settings shared by every cell (those that change a cell are its checkpoint's manifest)."""

    budgets: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    seeds: int = 5
    defences: tuple[str, ...] = DEFENCE_NAMES
    rounding_decimals: tuple[int, ...] = (1, 2)
    augmentation: str = "none"
    query_budget: int | None = None
    epochs: int = 30
    transfer_steps: int = 20
    base_seed: int = 0

    def cell_settings(self, victim: Victim) -> dict[str, Any]:
        """What a cell's result depends on: a finished cell is reused only if it is equal.

        The grid (budgets, seeds, defences) only chooses which cells exist, so a rerun
        with more seeds or another defence reuses every cell it shares. The victim counts
        by its weights and its attacker's and tester's inputs (its seed, the threat
        model), its clone trainer and its reverse model.
        """
        grid = ("budgets", "seeds", "defences", "rounding_decimals", "base_seed")
        record = {k: v for k, v in asdict(self).items() if k not in grid}
        queries = victim.queries_x if victim.queries_x is not None else victim.train_x
        return record | {
            "victim": victim.name,
            "transfer_eps": victim.transfer_eps,
            "trainer": repr(victim.trainer) if victim.trainer is not None else None,
            "reverse": type(victim.reverse).__name__ if victim.reverse is not None else None,
            "model_digest": tensor_digest(list(victim.model.state_dict().values())),
            "data_digest": tensor_digest([victim.train_x, queries, victim.test_x, victim.test_y]),
        }


def build_defence(spec: DefenceSpec, victim: Victim, seed: int) -> OutputDefence:
    """The defence of ``spec`` wrapped around ``victim.model`` (randomness from ``seed``)."""
    model = victim.model
    if spec.name == "none":
        return Undefended(model)
    if spec.name in ("fisher", "fisher_eigenvector"):
        search: FisherSearch = "l1" if spec.name == "fisher" else "eigenvector"
        return FisherPoisoning(
            model,
            spec.budget,  # type: ignore[arg-type]
            reverse=victim.reverse,
            seed=seed,
            search=search,
        )
    if spec.name == "random":
        return RandomPoisoning(model, spec.budget, seed=seed)  # type: ignore[arg-type]
    if spec.name == "mad":
        surrogate = build_seeded(victim.architecture, seed, name="architecture")
        return MAD(model, spec.budget, surrogate=surrogate, seed=seed)  # type: ignore[arg-type]
    if spec.name == "reverse_sigmoid":
        return ReverseSigmoid(model, budget=spec.budget, calibration=victim.train_x)
    if spec.name == "rounding":
        return Rounding(model, decimals=spec.decimals if spec.decimals is not None else 2)
    return LabelOnly(model)


@torch.no_grad()
def legitimate_utility(defence: OutputDefence, x: Tensor) -> dict[str, float]:
    """Top-1 agreement, mean L1 and mean ``KL(published || true)`` on inputs ``x``."""
    published = defence.publish(x)
    probs, true = published.probs.double(), published.true_probs.double()
    kl = torch.where(probs > 0, probs * (probs.clamp_min(1e-300).log() - true.log()), 0.0)
    return {
        "top1_agreement": float((probs.argmax(1) == true.argmax(1)).double().mean()),
        "mean_l1": float((probs - true).abs().sum(1).mean()),
        "mean_kl": float(kl.sum(1).mean()),
    }


def run_cell(
    victim: Victim, spec: DefenceSpec, seed: int, settings: CloneStudySettings
) -> dict[str, Any]:
    """One defence, one seed: utility, then an extraction attack and its clone's figures."""
    defence = build_defence(spec, victim, seed)
    utility = legitimate_utility(defence, victim.test_x)
    queries = victim.queries_x if victim.queries_x is not None else victim.train_x
    extraction = extract(
        defence,
        queries,
        victim.architecture,
        query_budget=settings.query_budget,
        augmentation=settings.augmentation,  # type: ignore[arg-type]
        epochs=settings.epochs,
        trainer=victim.trainer,
        seed=CLONE_SEED_OFFSET + seed,
        test=(victim.test_x, victim.test_y),
        reference=victim.model,
        transfer_eps=victim.transfer_eps,
        transfer_steps=settings.transfer_steps,
    )
    measurement = extraction.measurement
    if measurement is None:  # unreachable: extract measures whenever test is given
        raise InvalidArgumentError("the extraction returned no measurement")
    return {
        "victim": victim.name,
        "defence": spec.name,
        "key": spec.key,
        "budget": spec.budget,
        "decimals": spec.decimals,
        "seed": seed,
        "utility": utility,
        "clone": measurement.to_dict(),
        "queries_used": extraction.queries_used,
    }


def clone_study(
    victim: Victim,
    settings: CloneStudySettings,
    cell_dir: str | Path,
    *,
    resume: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, reload) every cell of ``victim``'s study.

    Each finished cell is written atomically to ``cell_dir/<victim name>``, beside a
    manifest of :meth:`CloneStudySettings.cell_settings`; a rerun with the same settings
    reloads it instead of recomputing it.

    Raises:
        CheckpointError: with ``resume``, when the finished cells were made with settings
            that change a cell (the message names each one); ``resume=False`` discards
            them and starts over.

    """
    store = Checkpoints(Path(cell_dir) / victim.name, settings.cell_settings(victim), resume=resume)
    specs = defence_grid(settings.defences, settings.budgets, decimals=settings.rounding_decimals)
    cells: list[dict[str, Any]] = []
    total = len(specs) * settings.seeds
    for offset in range(settings.seeds):
        seed = settings.base_seed + offset
        for spec in specs:
            name = f"{spec.key}-seed{seed}"
            cell = store.load(name)
            if cell is None:
                cell = run_cell(victim, spec, seed, settings)
                store.save(name, cell)
            cells.append(cell)
            logger.info(
                "%s: cell %d of %d (%s, seed %d): clone accuracy %.3f",
                victim.name,
                len(cells),
                total,
                spec.key,
                seed,
                cell["clone"]["accuracy"],
            )
            if on_cell is not None:
                on_cell(cell)
    return cells


METRICS: dict[str, tuple[str, str]] = {
    "top1_agreement": ("utility", "top1_agreement"),
    "mean_l1": ("utility", "mean_l1"),
    "mean_kl": ("utility", "mean_kl"),
    "clone_accuracy": ("clone", "accuracy"),
    "clone_agreement": ("clone", "agreement"),
    "transfer_rate": ("clone", "transfer_rate"),
}
"""Each reported figure and where it lives in a cell."""


def summarise_cells(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (victim, defence configuration): every metric's mean and 95% interval."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["victim"], cell["key"]), []).append(cell)
    rows = []
    for (victim, key), members in groups.items():
        first = members[0]
        row: dict[str, Any] = {
            "victim": victim,
            "defence": first["defence"],
            "key": key,
            "budget": first["budget"],
            "decimals": first["decimals"],
            "seeds": len(members),
        }
        for metric, (part, name) in METRICS.items():
            row[metric] = mean_interval([m[part][name] for m in members]).to_dict()
        rows.append(row)
    return rows


def paired_comparison(
    cells: Sequence[dict[str, Any]], first: str = "fisher", second: str = "random"
) -> list[dict[str, Any]]:
    """``first`` minus ``second`` per victim and budget, paired by seed, with 95% intervals.

    Negative clone-accuracy and transfer-rate differences mean ``first`` damages the
    clone more; ``beyond_ci`` says whether the interval excludes zero.
    """
    index = {(c["victim"], c["defence"], c["budget"], c["seed"]): c for c in cells}
    rows = []
    pairs = sorted({(c["victim"], c["budget"]) for c in cells if c["defence"] == first})
    for victim, budget in pairs:
        seeds = sorted(
            s
            for (v, d, b, s) in index
            if v == victim and d == first and b == budget and (victim, second, budget, s) in index
        )
        if not seeds:
            continue
        row: dict[str, Any] = {"victim": victim, "budget": budget, "seeds": len(seeds)}
        for metric in ("clone_accuracy", "clone_agreement", "transfer_rate", "mean_l1"):
            part, name = METRICS[metric]
            differences = [
                index[(victim, first, budget, s)][part][name]
                - index[(victim, second, budget, s)][part][name]
                for s in seeds
            ]
            interval = mean_interval(differences)
            row[metric] = interval.to_dict() | {
                "beyond_ci": bool(
                    math.isfinite(interval.half_width) and (interval.high < 0 or interval.low > 0)
                ),
            }
        rows.append(row)
    return rows
