"""``vulnscope audit``: every stage of the audit on one model, its result, record and report.

:func:`audit` runs the registered stages (:data:`STAGES`; one file each in
:mod:`vulnscope.audit.stages`, more with :func:`register_stage`) and returns an
:class:`AuditResult`, whose ``to_dict()`` is the record ``results.json`` holds (described by
:func:`results_schema`); given a directory it also writes the figures and the
self-contained ``report.html``, checkpointing every piece. The budgets not given are
chosen by :func:`choose_budgets` (conventional for a named data set, else from the model's
minimal perturbations), and the record says how.
"""

from vulnscope.audit.budgets import (
    CONVENTIONAL_BUDGETS,
    BudgetChoice,
    NormBudgets,
    choose_budgets,
)
from vulnscope.audit.pipeline import audit, audit_pieces
from vulnscope.audit.record import AuditResult, DataInfo, ModelInfo, Settings, Timing, Verdict
from vulnscope.audit.report import render_report, write_report
from vulnscope.audit.schema import CLOCK_FIELDS, SCHEMA_VERSION, results_schema, without_clock
from vulnscope.audit.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPSILONS,
    DEFAULT_EVALUATION,
    EVALUATIONS,
    QUICK,
    QuickSettings,
    default_stages,
)
from vulnscope.audit.stage import (
    STAGES,
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    Stage,
    StageVerdict,
    register_stage,
    registered_stages,
    unregister_stage,
)
from vulnscope.audit.verdict import LEVELS, verdict

__all__ = [
    "CLOCK_FIELDS",
    "CONVENTIONAL_BUDGETS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPSILONS",
    "DEFAULT_EVALUATION",
    "EVALUATIONS",
    "LEVELS",
    "QUICK",
    "SCHEMA_VERSION",
    "STAGES",
    "AuditPlan",
    "AuditResult",
    "BudgetChoice",
    "DataInfo",
    "ModelInfo",
    "NormBudgets",
    "Piece",
    "QuickSettings",
    "Report",
    "ReportSection",
    "Settings",
    "Stage",
    "StageVerdict",
    "Timing",
    "Verdict",
    "audit",
    "audit_pieces",
    "choose_budgets",
    "default_stages",
    "register_stage",
    "registered_stages",
    "render_report",
    "results_schema",
    "unregister_stage",
    "verdict",
    "without_clock",
    "write_report",
]
