"""The audit's RG stage: a deep RBM network read as a flow of effective Hamiltonians.

Monte Carlo RG estimates each layer's stability matrix; eigenvalues above one are
relevant operators, along which small input changes grow with depth, and the chain-rule
Fisher information gives the most dangerous input direction (see ``shared/method/RG.md``
and :func:`vulnscope.rg.rg_analysis`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.pretrained import BINARIZE_THRESHOLD
from vulnscope.rg.plots import plot_directions, plot_layers
from vulnscope.rg.study import rg_analysis

__all__ = ["rg_stage"]


def rg_stage(
    network: DeepRBM,
    x: Tensor,
    y: Tensor,
    *,
    samples: int,
    seed: int,
    directory: Path | None,
) -> dict[str, Any]:
    """The RG analysis of ``network`` on inputs x: (B, ...) (binarised at 0.5), y: (B,).

    Args:
        network: the deep RBM (depth >= 3 for a hidden-to-hidden stability matrix).
        x: the inputs analysed.
        y: their classes.
        samples: Monte Carlo chains per input.
        seed: seed of the chains and the random directions.
        directory: where the figures go (``None``: none).

    Returns:
        The record's ``rg`` section: depth, widths, operators, the summary over inputs
        (per-layer leading eigenvalues, relevant counts, product norm, Fisher, class-change
        distances) and ``relevant_layers``, the layers whose mean leading eigenvalue
        exceeds one.

    """
    binary = (x > BINARIZE_THRESHOLD).to(x.dtype)
    report = rg_analysis(network, binary, y, samples=samples, seed=seed)
    if directory is not None:
        plot_layers(report, directory / "rg_layers.png")
        plot_directions(report, binary, directory / "rg_directions.png")
    record = report.to_dict()
    layers = record["summary"]["layers"]
    return {
        "depth": record["depth"],
        "widths": record["widths"],
        "operators": record["operators"],
        "summary": record["summary"],
        "relevant_layers": [
            row["layer"]
            for row in layers
            if row["kind"] == "eigenvalue" and (row["leading_mean"] or 0.0) > 1.0
        ],
    }
