"""Geometry diagnostics for any differentiable classifier."""

from vulnscope.diagnostics.fisher import FisherResult, input_fisher

__all__ = ["FisherResult", "input_fisher"]
