"""The figure of a detector's evaluation: ROC curves and the attacks' success, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vulnscope._plotting import new_figure, save_png
from vulnscope.detect.evaluation import DetectionReport

__all__ = ["plot_detection"]


def plot_detection(reports: Sequence[DetectionReport], path: str | Path) -> Path:
    """ROC curves (clean against each attacker's fooling examples) and success rates.

    Args:
        reports: one :class:`~vulnscope.detect.evaluation.DetectionReport` per attacker.
        path: where the PNG goes.

    Returns:
        ``path``.

    """
    figure, axes = new_figure(1, 2, size=(9.0, 3.6))
    roc, bars = axes[0, 0], axes[0, 1]
    for report in reports:
        label = f"{report.knowledge} (AUC {report.auc:.2f})"
        roc.plot(report.roc.fpr.cpu().numpy(), report.roc.tpr.cpu().numpy(), label=label)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    roc.axvline(reports[0].fpr if reports else 0.05, color="grey", linewidth=0.6)
    roc.set(xlabel="false-positive rate (clean)", ylabel="true-positive rate", xlim=(0, 1))
    roc.set_ylim(0, 1.01)
    roc.legend(fontsize=7, loc="lower right")
    roc.set_title(f"{reports[0].detector if reports else ''}: ROC", fontsize=9)
    names = [report.knowledge for report in reports]
    bars.bar(names, [100 * report.success_rate for report in reports], color="C3")
    bars.set(ylabel="attack succeeds (%)", ylim=(0, 100))
    bars.set_title("misclassified and not flagged", fontsize=9)
    return save_png(figure, path)
