"""The audit's HTML report; it lives in :mod:`vulnscope.audit.report` (kept here by name)."""

from vulnscope.audit.report import render_report, write_report

__all__ = ["render_report", "write_report"]
