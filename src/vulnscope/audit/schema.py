"""The layout of ``results.json``: its version, and the JSON Schema shipped in the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["CLOCK_FIELDS", "SCHEMA_VERSION", "results_schema", "without_clock"]

SCHEMA_VERSION = 3
"""Version of the ``results.json`` layout; bumped whenever a field changes meaning.

2: robust accuracy under the standard cascade (one curve, which attack broke each point,
the gradient-masking warnings) instead of one curve per attack.
3: the full audit: curves for L∞ and L2 under ``robustness``, the minimal perturbations,
spectra, layer amplification, the dangerous perturbation, the RG analysis of a deep RBM,
the verdict, the figures, and the settings of every stage.
"""


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``.

    The frame (model, data, settings, verdict, ...) and the shared definitions ship in the
    package; each registered stage adds its section's schema (:attr:`Stage.schema`) at its
    ``section``, and its name to the stages a record may list. Validate a record with any
    JSON Schema validator, e.g. ``jsonschema.validate(record, results_schema())``.
    """
    from vulnscope.audit.stage import registered_stages

    text = resources.files("vulnscope").joinpath("schemas/results.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    stages = registered_stages()
    schema["properties"]["settings"]["properties"]["stages"]["items"] = {"enum": list(stages)}
    for stage in stages.values():
        node = schema
        for key in stage.section[:-1]:
            node = node["properties"].setdefault(
                key,
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {},
                },
            )
        node["properties"][stage.section[-1]] = json.loads(json.dumps(stage.schema))
    return schema


CLOCK_FIELDS = ("created", "timing", "attack_seconds")
"""The fields of a record that measure the clock: two runs with the same seed (resumed,
sharded over any number of workers, or not) differ only in these."""


def without_clock(record: Any) -> Any:
    """``record`` with every :data:`CLOCK_FIELDS` entry removed, at any depth.

    Two audits with the same settings and seed give equal ``without_clock`` records.
    """
    if isinstance(record, dict):
        return {
            key: without_clock(value) for key, value in record.items() if key not in CLOCK_FIELDS
        }
    if isinstance(record, list):
        return [without_clock(value) for value in record]
    return record
