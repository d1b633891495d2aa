"""The ``vulnscope rg`` job: the RG analysis of a digits deep RBM, its depth study, files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vulnscope import __version__
from vulnscope._cache import recipe_digest
from vulnscope._checkpoint import Checkpoints
from vulnscope._io import write_json_atomic
from vulnscope._validation import check_int, check_seed
from vulnscope.rbm.pretrained import DeepRBMRecipe, binarized_digits, pretrained_deep_rbm
from vulnscope.rg.analysis import OperatorChoice
from vulnscope.rg.plots import plot_depth_study, plot_directions, plot_layers
from vulnscope.rg.study import depth_study, rg_analysis

__all__ = ["RG_SCHEMA_VERSION", "run_rg"]

logger = logging.getLogger(__name__)

RG_SCHEMA_VERSION = 1
"""Version of the layout of ``rg.json``."""

CHECKPOINT = ".checkpoint"
"""Where, under the output directory, the finished depths wait for ``rg.json``."""


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
    resume: bool = True,
) -> dict[str, Any]:
    """Analyse a deep RBM on the binarised digits and write ``rg.json`` and figures to ``out``.

    The network (``depth`` RBMs, hidden ``width``) is trained or loaded from the cache;
    the first ``limit`` test images are analysed; the depth study repeats the analysis
    on a network of each of ``depths`` (empty to skip it). Each finished depth of the
    study is checkpointed in ``out/.checkpoint`` (removed once ``rg.json`` is written),
    so an interrupted run resumes there.

    Args:
        out: output directory (created).
        depth: RBMs in the analysed network (>= 2).
        width: units per hidden layer.
        operators: operator set of the hidden levels.
        samples: Monte Carlo chains per input.
        limit: test images analysed.
        depths: depths of the depth study (empty to skip it).
        seed: seed of the networks, the chains and the directions.
        resume: reuse the depths an interrupted run with the same settings finished; a
            checkpoint made with other settings is refused
            (:class:`vulnscope._checkpoint.CheckpointError`, naming them). ``False``
            discards it and starts over (the CLI's ``--fresh``).

    Returns:
        The record written to ``out/rg.json``.

    """
    depth = check_int(depth, "depth", minimum=2)
    limit = check_int(limit, "limit")
    seed = check_seed(seed) or 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "depth": depth,
        "width": width,
        "operators": operators,
        "samples": samples,
        "limit": limit,
        "depths": list(depths),
        "seed": seed,
    }
    # the cached networks' recipe: other training code makes other networks
    store = Checkpoints(
        out / CHECKPOINT,
        settings | {"network_recipe": recipe_digest(DeepRBMRecipe())},
        resume=resume,
    )
    test = binarized_digits("test")
    data = test.take(limit)
    network = pretrained_deep_rbm(depth=depth, width=width, seed=seed)
    accuracy = float((network.classify(test.x, chains=256).argmax(1) == test.y).float().mean())
    logger.info("depth-%d network: test accuracy %.1f%% (sampled pass)", depth, 100 * accuracy)
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
        rows = []
        for studied in depths:
            row = store.load(f"depth-{studied}")
            if row is None:
                study = depth_study(
                    [studied],
                    data.x,
                    data.y,
                    width=width,
                    test=(test.x, test.y),
                    operators=operators,
                    samples=samples,
                    seed=seed,
                )
                row = study.to_dict()["rows"][0]
                store.save(f"depth-{studied}", row)
            rows.append(row)
        record["depth_study"] = {"rows": rows}
        figures["depth_study"] = plot_depth_study(rows, out / "rg_depth.png").name
    write_json_atomic(out / "rg.json", record)
    Checkpoints.discard_directory(out / CHECKPOINT)
    return record
