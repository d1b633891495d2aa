"""The ``vulnscope rg`` job: the RG analysis of a digits deep RBM, its depth study, files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vulnscope import __version__
from vulnscope._io import write_json_atomic
from vulnscope._validation import check_int, check_seed
from vulnscope.rbm.pretrained import binarized_digits, pretrained_deep_rbm
from vulnscope.rg.analysis import OperatorChoice
from vulnscope.rg.plots import plot_depth_study, plot_directions, plot_layers
from vulnscope.rg.study import depth_study, rg_analysis

__all__ = ["RG_SCHEMA_VERSION", "run_rg"]

logger = logging.getLogger(__name__)

RG_SCHEMA_VERSION = 1
"""Version of the layout of ``rg.json``."""


def run_rg(
    out: str | Path,
    *,
    depth: int = 4,
    width: int = 64,
    operators: OperatorChoice = "pairs",
    samples: int = 10_000,
    limit: int = 20,
    depths: Sequence[int] = (2, 3, 4, 5, 6),
    seed: int = 0,
) -> dict[str, Any]:
    """Analyse a deep RBM on the binarised digits and write ``rg.json`` and figures to ``out``.

    The network (``depth`` RBMs, hidden ``width``) is trained or loaded from the cache;
    the first ``limit`` test images are analysed; the depth study repeats the analysis
    on a network of each of ``depths`` (empty to skip it).

    Returns:
        The record written to ``out/rg.json``.

    """
    depth = check_int(depth, "depth", minimum=2)
    limit = check_int(limit, "limit")
    seed = check_seed(seed) or 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = binarized_digits("test")
    data = test.take(limit)
    network = pretrained_deep_rbm(depth=depth, width=width, seed=seed)
    accuracy = float((network.classify(test.x, chains=256).argmax(1) == test.y).float().mean())
    logger.info("depth-%d network: test accuracy %.1f%% (sampled pass)", depth, 100 * accuracy)
    settings = {
        "depth": depth,
        "width": width,
        "operators": operators,
        "samples": samples,
        "limit": limit,
        "depths": list(depths),
        "seed": seed,
    }
    report = rg_analysis(network, data.x, data.y, operators=operators, samples=samples, seed=seed)
    figures = {
        "layers": plot_layers(report, out / "rg_layers.png").name,
        "directions": plot_directions(report, data.x, out / "rg_directions.png").name,
    }
    record: dict[str, Any] = {
        "schema_version": RG_SCHEMA_VERSION,
        "vulnscope_version": __version__,
        "settings": settings,
        "data": {"source": data.source, "samples": len(data)},
        "network": {"depth": depth, "width": width, "test_accuracy_sampled": accuracy},
        "analysis": report.to_dict(),
        "figures": figures,
    }
    if depths:
        study = depth_study(
            depths,
            data.x,
            data.y,
            width=width,
            test=(test.x, test.y),
            operators=operators,
            samples=samples,
            seed=seed,
        )
        record["depth_study"] = study.to_dict()
        figures["depth_study"] = plot_depth_study(study, out / "rg_depth.png").name
    write_json_atomic(out / "rg.json", record)
    return record
