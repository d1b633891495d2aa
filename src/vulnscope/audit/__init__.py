"""``vulnscope audit``: every stage of the audit on one model, its record and its report.

:func:`audit` runs the stages (:data:`STAGES`) and returns the record that
``results.json`` holds (described by :func:`results_schema`); given a directory it also
writes the figures and the self-contained ``report.html``, checkpointing every chunk.
"""

from vulnscope.audit.pipeline import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPSILONS,
    QUICK,
    STAGES,
    audit,
    audit_pieces,
    default_stages,
)
from vulnscope.audit.schema import CLOCK_FIELDS, SCHEMA_VERSION, results_schema, without_clock
from vulnscope.audit.verdict import verdict

__all__ = [
    "CLOCK_FIELDS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPSILONS",
    "QUICK",
    "SCHEMA_VERSION",
    "STAGES",
    "audit",
    "audit_pieces",
    "default_stages",
    "results_schema",
    "verdict",
    "without_clock",
]
