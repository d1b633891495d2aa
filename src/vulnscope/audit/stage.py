"""What an audit stage is: the :class:`Stage` protocol, the plan it runs on, and the registry.

A stage is one file in :mod:`vulnscope.audit.stages` (or anywhere, registered with
:func:`register_stage`). It says everything the audit needs to know about it, so that
:func:`vulnscope.audit.audit` names no stage:

- ``name``, ``description`` and where its result goes in ``results.json`` (``section``)
  with the JSON Schema of that section (``schema``);
- when it applies to a model (:meth:`Stage.applies_to`) and whether it runs by default;
- the pieces it shards into (:meth:`Stage.pieces`), how to compute one
  (:meth:`Stage.compute`, a typed piece that the checkpoint stores as JSON) and how to
  merge every piece into its typed result (:meth:`Stage.merge`);
- its figures, the warnings it raises, its part of the verdict (:meth:`Stage.verdict`),
  its key figures, its lines in the command line's summary and its
  section of the HTML report;
- the stages whose settings or results it reads (``reads``): they run, and merge, first.

The audit computes every piece of every stage (each rank of a sharded run the pieces it
claims), checkpoints each piece, then merges the pieces stage by stage in registry order.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from vulnscope.audit.budgets import BudgetChoice
from vulnscope.audit.codec import from_json, to_json
from vulnscope.data.dataset import ImageData
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, PluginError

__all__ = [
    "PLUGIN_GROUP",
    "STAGES",
    "AuditPlan",
    "Piece",
    "Report",
    "ReportSection",
    "Stage",
    "StageVerdict",
    "register_stage",
    "registered_stages",
    "unregister_stage",
]

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class AuditPlan:
    """The checked settings of one audit, as every stage sees them.

    Attributes:
        model: the classifier, (N, ...) -> logits (N, C).
        data: the samples (inputs in [0, 1]).
        device: where tensors go.
        seed: the seed of every stochastic step.
        quick: the ``--quick`` settings apply.
        epsilons: the budgets per norm (``"linf"``, ``"l2"``), as given.
        attacks: the cascade's attacks as given (names from ``CASCADE_ATTACKS``).
        attack_names: how reports name them (``"APGD-CE"``...).
        batch_size: samples per attack call and per chunk (None: one chunk).
        sample: (S,) sorted indices of the geometry sample.
        directory: where figures go (None: nowhere).
        num_classes: the model's number of outputs.
        extra: settings of stages outside the package (``audit(..., options=...)``).
        budgets: how each norm's budgets were chosen (None: a plan made by hand).
        evaluation: how the robustness stages attack: ``"adaptive"``
            (:func:`~vulnscope.evaluate.adaptive_chunk`) or ``"standard"``
            (:func:`~vulnscope.evaluate.cascade_chunk`).

    """

    model: Callable[[Tensor], Tensor]
    data: ImageData
    device: torch.device
    seed: int
    quick: bool
    epsilons: Mapping[str, Sequence[float]]
    attacks: Sequence[str]
    attack_names: Sequence[str]
    batch_size: int | None
    sample: Tensor
    directory: Path | None
    num_classes: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    budgets: BudgetChoice | None = None
    evaluation: str = "adaptive"

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """(start, stop) of each chunk of the data, by sample index."""
        size, total = self.batch_size or len(self.data), len(self.data)
        return [(start, min(start + size, total)) for start in range(0, total, size)]

    def rows(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """The inputs and labels of samples ``[start, stop)`` on the device."""
        return (self.data.x[start:stop].to(self.device), self.data.y[start:stop].to(self.device))

    def geometry_inputs(self) -> tuple[Tensor, Tensor]:
        """The inputs and labels of the geometry sample on the device."""
        return (self.data.x[self.sample].to(self.device), self.data.y[self.sample].to(self.device))


@dataclass(frozen=True)
class Piece:
    """One unit of a stage's work: a rank claims it, computes it and checkpoints it.

    Attributes:
        name: unique within the audit (the checkpoint's file name), e.g. ``"linf-00003"``.
        index: its position among the stage's pieces (a chunk's index: its seed offset).
        start: first sample of a chunk.
        stop: one past its last sample (``start == stop == 0`` for a whole-stage piece).
        steps: progress steps it reports.

    """

    name: str
    index: int = 0
    start: int = 0
    stop: int = 0
    steps: int = 1


@dataclass(frozen=True)
class ReportSection:
    """A stage's part of the HTML report.

    Consecutive stages whose sections have the same ``title`` share one section (the L∞
    and L2 curves, say): their figures are shown once, then their bodies in order, then
    their notes, each distinct note once with every place it applies to.

    Attributes:
        title: the section's heading (fixed text).
        body: HTML.
        figures: keys of the figures shown at the top (see :meth:`Stage.figures`).
        notes: ``(text, where)`` pairs, e.g. a masking warning and ``"L∞ ε = 0.1"``.

    """

    title: str
    body: str
    figures: tuple[str, ...] = ()
    notes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StageVerdict:
    """A stage's part of the verdict.

    Attributes:
        reference: ``(threat model as the verdict writes it, e.g. "L∞", eps, robust
            accuracy)`` at the stage's middle budget, for the
            vulnerability level (robustness stages only).
        sentences: where the model is fragile, in plain words.
        masking: names of the gradient-masking checks that fired.

    """

    reference: tuple[str, float, float] | None = None
    sentences: tuple[str, ...] = ()
    masking: tuple[str, ...] = ()


class Report(ABC):
    """What a stage's report section may use: HTML helpers and its figures, embedded."""

    @abstractmethod
    def table(self, header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
        """A table; every cell is escaped."""

    @abstractmethod
    def text(self, value: Any) -> str:
        """``value`` escaped as HTML text."""

    @abstractmethod
    def number(self, value: Any) -> str:
        """A number for reading (``—`` for None)."""

    @abstractmethod
    def percent(self, value: Any) -> str:
        """A fraction as a percentage (``—`` for None)."""

    @property
    @abstractmethod
    def class_names(self) -> Sequence[str] | None:
        """The data's class names, when it has them."""


class Stage(ABC, Generic[P, R]):
    """One stage of the audit (see the module docstring).

    Subclasses set the class attributes and implement :meth:`compute` and :meth:`merge`;
    the other methods have defaults for a stage that runs once on the whole plan.

    Attributes:
        name: the stage's name (``--stages``), lower case.
        description: what it measures, in a few words (logs, ``--help``).
        section: the path of its result in ``results.json``, e.g. ``("robustness", "linf")``.
        piece_type: the dataclass of one piece's result.
        result_type: the dataclass of its merged result.
        schema: the JSON Schema of its section (may use the shared ``#/$defs``).
        reads: stages whose settings or results it uses (the registry runs them first).
        default: runs when the user names no stages (and it applies).
        budget_norms: the norms at whose budgets (``epsilons``) it runs: the audit
            measures budgets only for the norms of the stages that run.
        tolerant: a piece that raises RuntimeError or NotImplementedError (a model that
            cannot take the stage's derivatives, say) drops this stage only, with a
            warning, instead of failing the audit.

    """

    name: ClassVar[str]
    description: ClassVar[str]
    section: ClassVar[tuple[str, ...]]
    piece_type: ClassVar[type[Any]]
    result_type: ClassVar[type[Any]]
    schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    reads: ClassVar[tuple[str, ...]] = ()
    default: ClassVar[bool] = True
    tolerant: ClassVar[bool] = False
    budget_norms: ClassVar[tuple[str, ...]] = ()

    def applies_to(self, model: Callable[[Tensor], Tensor]) -> str | None:
        """None when the stage can run on ``model``; otherwise why not (one sentence)."""
        return None

    def pieces(self, plan: AuditPlan) -> list[Piece]:
        """The pieces of the stage's work (default: one, named after the stage)."""
        return [Piece(self.name)]

    @abstractmethod
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> P:
        """Compute one piece (call ``tick()`` after each of its ``steps``, if it likes)."""

    @abstractmethod
    def merge(self, pieces: Sequence[P], plan: AuditPlan, results: Mapping[str, Any]) -> R:
        """The stage's result from all its pieces, in piece order.

        ``results`` holds the merged results of the stages that ran before it.
        """

    def warnings(self, result: R) -> list[str]:
        """Warnings the record lists for this stage (default: none)."""
        return []

    def figures(
        self, result: R, plan: AuditPlan, results: Mapping[str, Any], clean_accuracy: float
    ) -> dict[str, str]:
        """Draw the stage's figures into ``plan.directory``; return ``{key: file name}``.

        Called only when ``plan.directory`` is set; ``results`` holds every stage's result.
        """
        return {}

    def verdict(self, result: R, clean_accuracy: float) -> StageVerdict:
        """The stage's part of the verdict (default: nothing to say)."""
        return StageVerdict()

    def summary(self, result: R) -> list[str]:
        """Lines the command line prints after the audit (default: none)."""
        return []

    def key_figures(self, result: R, report: Report) -> list[tuple[str, str]]:
        """Rows ``(label, value)`` of the report's key-figures table."""
        return []

    def report(self, result: R, report: Report) -> ReportSection | None:
        """The stage's section of the HTML report (default: none)."""
        return None

    def encode(self, value: Any) -> Any:
        """A piece or result as JSON (dataclass fields by name)."""
        return to_json(value)

    def decode_piece(self, data: Any) -> P:
        """A checkpointed piece read back."""
        piece: P = from_json(self.piece_type, data, where=f"{self.name} piece")
        return piece

    def decode_result(self, data: Any) -> R:
        """A stage's section of ``results.json`` read back."""
        result: R = from_json(self.result_type, data, where=".".join(self.section))
        return result


_REGISTRY: dict[str, Stage[Any, Any]] = {}


def register_stage(stage: Stage[Any, Any], *, before: str | None = None) -> Stage[Any, Any]:
    """Add ``stage`` to the audit (after the others, or before the stage ``before``).

    Raises:
        InvalidTypeError: ``stage`` is not a :class:`Stage` instance.
        InvalidArgumentError: its name is taken or malformed, ``before`` is unknown, or it
            reads a stage that is not registered before it.

    """
    if not isinstance(stage, Stage):
        got = f"the class {stage.__name__}" if isinstance(stage, type) else type(stage).__name__
        raise InvalidTypeError(f"stage must be a Stage instance, got {got}")
    _load_builtin()  # a plug-in's stage comes after the built-in ones
    name = getattr(stage, "name", "")
    if (
        not isinstance(name, str)
        or not name.replace("-", "_").isidentifier()
        or name != name.lower()
        or name.startswith("-")
    ):
        raise InvalidArgumentError(
            f"stage.name must be a lower-case identifier (hyphens allowed), got {name!r}"
        )
    if name in _REGISTRY:
        raise InvalidArgumentError(f"stage {name!r} is registered already")
    for field_name in ("piece_type", "result_type"):
        if not dataclasses.is_dataclass(getattr(stage, field_name, None)):
            raise InvalidTypeError(f"stage {name!r}: {field_name} must be a dataclass")
    order = list(_REGISTRY)
    if before is not None and before not in _REGISTRY:
        raise InvalidArgumentError(f"before: unknown stage {before!r}")
    position = order.index(before) if before is not None else len(order)
    missing = [read for read in stage.reads if read not in order[:position]]
    if missing:
        raise InvalidArgumentError(
            f"stage {name!r} reads {missing[0]!r}, which is not registered before it"
        )
    order.insert(position, name)
    entries = {**_REGISTRY, name: stage}
    _REGISTRY.clear()
    _REGISTRY.update({key: entries[key] for key in order})
    return stage


def unregister_stage(name: str) -> None:
    """Remove the stage ``name`` (a test's or a plug-in's); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered_stages() -> dict[str, Stage[Any, Any]]:
    """The registered stages by name, in the order they run."""
    _load_builtin()
    return dict(_REGISTRY)


class _Descriptions(Mapping[str, str]):
    """The registered stages' names and descriptions, in order (a live view)."""

    def __getitem__(self, name: str) -> str:
        return registered_stages()[name].description

    def __iter__(self) -> Any:
        return iter(registered_stages())

    def __len__(self) -> int:
        return len(registered_stages())


STAGES: Mapping[str, str] = _Descriptions()
"""The audit's stages, in the order they run, and what each measures."""


PLUGIN_GROUP = "vulnscope.audit_stages"
"""Entry-point group of installed packages' stages: each entry point names a :class:`Stage`
instance (or subclass), registered after the built-in ones, e.g. in ``pyproject.toml``::

    [project.entry-points."vulnscope.audit_stages"]
    occlusion = "my_package.stages:OcclusionStage"
"""

_loaded = False


def _load_builtin() -> None:
    """Register the built-in stages, then the installed packages' ones (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the built-in modules call register_stage as they import
    # the built-in stages register themselves when their package is imported
    from importlib.metadata import entry_points

    import vulnscope.audit.stages  # noqa: F401

    for point in entry_points(group=PLUGIN_GROUP):
        try:
            loaded = point.load()
            stage = loaded() if isinstance(loaded, type) else loaded
        except Exception as error:
            raise PluginError(
                f"the audit stage {point.name!r} ({point.value}) of an installed package "
                f"cannot be loaded: {type(error).__name__}: {error}"
            ) from None
        if getattr(stage, "name", None) not in _REGISTRY:
            register_stage(stage)
