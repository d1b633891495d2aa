"""The audit's typed result, and its one translation to and from ``results.json``.

:class:`AuditResult` is what :func:`vulnscope.audit.audit` returns: the model and data
described, the settings, the clean accuracy, each stage's typed result (by stage name),
the warnings, the verdict, the figures and the timing. :meth:`AuditResult.to_dict` writes
the record that ``results.json`` holds (:func:`vulnscope.audit.results_schema`), where each
stage's result sits at the stage's ``section``; :meth:`AuditResult.from_dict` reads one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vulnscope.audit.budgets import BudgetChoice
from vulnscope.audit.codec import from_json, to_json
from vulnscope.audit.stage import registered_stages
from vulnscope.errors import DataError

__all__ = ["AuditResult", "DataInfo", "ModelInfo", "Settings", "Timing", "Verdict"]


@dataclass(frozen=True)
class ModelInfo:
    """The model audited: its name, size, outputs, kind and what its file says of it."""

    name: str
    parameters: int | None
    num_classes: int
    kind: str
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class DataInfo:
    """The data audited: where it came from, its size, input shape and class names."""

    source: str
    samples: int
    input_shape: list[int]
    class_names: list[str] | None


@dataclass(frozen=True)
class Settings:
    """The settings that make the record what it is (the same for any worker count).

    Attributes:
        budgets: how each norm's budgets (``epsilons``) were chosen (None in a record
            written before vulnscope said so).
        evaluation: how the robustness stages attacked, ``"adaptive"`` or ``"standard"``
            (``"standard"`` in a record written before the adaptive evaluation).

    """

    seed: int
    stages: list[str]
    quick: bool
    device: str
    batch_size: int
    attacks: list[str]
    epsilons: dict[str, list[float]]
    geometry_samples: int
    budgets: BudgetChoice | None = None
    evaluation: str = "standard"


@dataclass(frozen=True)
class Verdict:
    """How vulnerable the model is (``level``), in one line and in one paragraph."""

    level: str
    headline: str
    text: str


@dataclass(frozen=True)
class Timing:
    """Seconds of computation in all and per stage, and the processes that shared them."""

    total: float
    stages: dict[str, float]
    workers: int = 1


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit found (see the module docstring).

    Attributes:
        results: each stage that ran and did not fail, by name, as its typed result.

    """

    schema_version: int
    vulnscope_version: str
    created: str
    model: ModelInfo
    data: DataInfo
    settings: Settings
    clean_accuracy: float
    results: dict[str, Any]
    warnings: list[str]
    verdict: Verdict
    figures: dict[str, str] = field(default_factory=dict)
    timing: Timing = field(default_factory=lambda: Timing(0.0, {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record (``results.json``)."""
        record: dict[str, Any] = {
            "schema_version": self.schema_version,
            "vulnscope_version": self.vulnscope_version,
            "created": self.created,
            "model": to_json(self.model),
            "data": to_json(self.data),
            "settings": to_json(self.settings),
            "clean_accuracy": self.clean_accuracy,
        }
        stages = registered_stages()
        for name, result in self.results.items():
            *parents, key = stages[name].section
            node = record
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = stages[name].encode(result)
        record.update(
            warnings=list(self.warnings),
            verdict=to_json(self.verdict),
            figures=dict(self.figures),
            timing=to_json(self.timing),
        )
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> AuditResult:
        """Read a record (``results.json``, parsed) back; stages it lacks are left out.

        Raises:
            DataError: the record lacks a field or has one of the wrong kind, or names a
                stage that is not registered.

        """
        if not isinstance(record, Mapping):
            raise DataError(f"record: expected a JSON object, got {type(record).__name__}")
        stages = registered_stages()
        results: dict[str, Any] = {}
        names: list[str] = from_json(
            list[str], record.get("settings", {}).get("stages"), where="record.settings.stages"
        )
        for name in names:
            if name not in stages:
                raise DataError(f"record: the stage {name!r} is not registered here")
            node: Any = record
            for key in stages[name].section:
                node = node.get(key) if isinstance(node, Mapping) else None
            if node is not None:  # a tolerant stage that failed has no section
                results[name] = stages[name].decode_result(node)
        base = {key: record[key] for key in record if key in cls.__dataclass_fields__}
        if "timing" not in base:
            base["timing"] = {"total": 0.0, "stages": {}}
        base["figures"] = base.get("figures", {})
        typed: AuditResult = from_json(cls, {**base, "results": {}}, where="record")
        return cls(**{**vars(typed), "results": results})
