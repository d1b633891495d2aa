"""The ``vulnscope clone`` job: the cloning study on the digits CNN and the deep RBM network."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from vulnscope import __version__
from vulnscope._io import write_json_atomic
from vulnscope._validation import check_choice, check_int, check_seed
from vulnscope.cloning.decoder import ConditionalDecoder
from vulnscope.cloning.generation_fisher import GenerationPassFisher
from vulnscope.cloning.plots import plot_clone_damage
from vulnscope.cloning.presets import study_size
from vulnscope.cloning.rbm_clone import DeepRBMCloneTrainer
from vulnscope.cloning.reverse import MemoizedReverse
from vulnscope.cloning.simplex import check_budget
from vulnscope.cloning.study import (
    DEFENCE_NAMES,
    CloneStudySettings,
    Victim,
    clone_study,
    paired_comparison,
    summarise_cells,
)
from vulnscope.errors import InvalidArgumentError

__all__ = ["CLONE_SCHEMA_VERSION", "QUERY_CHOICES", "VICTIM_CHOICES", "run_clone"]

logger = logging.getLogger(__name__)

CLONE_SCHEMA_VERSION = 1
"""Version of the layout of ``clone.json``."""

VICTIM_CHOICES: tuple[str, ...] = ("deep-rbm", "digits-cnn")
QUERY_CHOICES: tuple[str, ...] = ("train", "disjoint", "jacobian")

QueryChoice = Literal["train", "disjoint", "jacobian"]

DIGITS_CLASSES = 10
"""Classes of both victims (the digits)."""

JACOBIAN_SEED_QUERIES = 100
"""Natural seed inputs of the Jacobian-augmentation attacker."""


def _split_for_queries(
    train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, queries: QueryChoice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(queries, test_x, test_y)`` of a threat model.

    ``"train"``: the victim's own training inputs, measured on the whole test split.
    ``"disjoint"``: the first half of the test split (never seen by the victim), measured
    on the second half. ``"jacobian"``: the first 100 of that half as the seed set.
    """
    if queries == "train":
        return train_x, test_x, test_y
    half = test_x.shape[0] // 2
    natural = test_x[:half] if queries == "disjoint" else test_x[:JACOBIAN_SEED_QUERIES]
    return natural, test_x[half:], test_y[half:]


def digits_cnn_victim(
    *, seed: int = 0, queries: QueryChoice = "train", fit_reverse: bool = True
) -> Victim:
    """The embedded digits CNN, cloned with its own architecture.

    Fisher poisoning uses a class-conditional decoder the defender fits on its training
    inputs and the victim's clean outputs (the reverse network of an ordinary classifier);
    ``fit_reverse=False`` skips it when the study has no Fisher poisoning.
    """
    from vulnscope.data.digits import load_digits
    from vulnscope.models.cache import pretrained
    from vulnscope.models.digits import DigitsCNN

    model = pretrained("digits-cnn", seed=seed)
    train, test = load_digits("train"), load_digits("test")
    reverse = None
    if fit_reverse:
        with torch.no_grad():
            clean = torch.softmax(model(train.x).double(), -1)
        reverse = ConditionalDecoder.fit(train.x, clean, seed=seed)
    query_x, test_x, test_y = _split_for_queries(train.x, test.x, test.y, queries)
    return Victim(
        "digits-cnn",
        model,
        DigitsCNN,
        train.x,
        test_x,
        test_y,
        reverse=reverse,
        transfer_eps=0.2,
        queries_x=query_x,
    )


def deep_rbm_victim(
    *,
    seed: int = 0,
    depth: int = 4,
    width: int = 64,
    queries: QueryChoice = "train",
    cloner: Literal["fine_tune", "eq14"] = "fine_tune",
) -> Victim:
    """The cached deep RBM classifier of the binarised digits, cloned as a deep RBM.

    Fisher poisoning uses the network's own generation pass (Kenway 2018b).
    """
    from vulnscope.rbm.network import DeepRBM
    from vulnscope.rbm.pretrained import binarized_digits, pretrained_deep_rbm

    network = pretrained_deep_rbm(depth=depth, width=width, seed=seed)
    train, test = binarized_digits("train"), binarized_digits("test")
    widths, classes = network.widths, network.num_classes

    def architecture() -> DeepRBM:
        # the clone's initial weights follow the global generator, which extract seeds
        return DeepRBM(widths, classes, seed=int(torch.randint(2**31 - 1, ())))

    # single-spin operators and 4000 chains: the top eigenvector agrees with the
    # 16 000-chain singles-and-pairs estimate within a few percent, at a quarter of the cost
    reverse = MemoizedReverse(
        GenerationPassFisher(network, operators="singles", samples=4000, seed=seed)
    )
    query_x, test_x, test_y = _split_for_queries(train.x, test.x, test.y, queries)
    return Victim(
        "deep-rbm",
        network,
        architecture,
        train.x,
        test_x,
        test_y,
        trainer=DeepRBMCloneTrainer(method=cloner),
        reverse=reverse,
        transfer_eps=0.2,
        queries_x=query_x,
    )


def run_clone(
    out: str | Path,
    *,
    victims: Sequence[str] = VICTIM_CHOICES,
    budgets: Sequence[float] | None = None,
    seeds: int | None = None,
    defences: Sequence[str] = DEFENCE_NAMES,
    queries: QueryChoice = "train",
    query_budget: int | None = None,
    epochs: int | None = None,
    cloner: Literal["fine_tune", "eq14"] = "fine_tune",
    quick: bool = False,
    seed: int = 0,
    resume: bool = True,
) -> dict[str, Any]:
    """Run the cloning study and write ``clone.json`` and ``clone_damage.png`` to ``out``.

    Args:
        out: output directory; finished cells go to ``out/cells/<victim>`` and are reused
            by a rerun with the same settings (``resume``).
        victims: any of ``"deep-rbm"`` and ``"digits-cnn"``.
        budgets: L1 budgets of the budgeted defences (default: those of
            :data:`~vulnscope.cloning.presets.DEFAULT_SIZE`, or of
            :data:`~vulnscope.cloning.presets.QUICK` with ``quick``; likewise ``seeds``
            and ``epochs``).
        seeds: repetitions (clone initialisation and training order, and the defences'
            randomness); intervals need at least 2.
        defences: names from :data:`vulnscope.cloning.study.DEFENCE_NAMES`.
        queries: the attacker's inputs: ``"train"`` (the victim's own distribution),
            ``"disjoint"`` (a natural subset the victim never saw) or ``"jacobian"``
            (100 natural seeds grown by Jacobian-based augmentation).
        query_budget: queries the attacker may make (default: all its natural inputs,
            800 for ``"jacobian"``).
        epochs: clone training epochs.
        cloner: how the deep-RBM clone is trained (``"fine_tune"`` or Kenway's ``"eq14"``).
        quick: a fast pass: the budgets, seeds and epochs not given come from
            :data:`~vulnscope.cloning.presets.QUICK`.
        seed: seed of the first repetition and of the victims.
        resume: reuse finished cells; cells made with settings that change a cell are
            refused (:class:`vulnscope._checkpoint.CheckpointError`, naming them).
            ``False`` discards them and starts over (the CLI's ``--fresh``).

    Returns:
        The record written to ``out/clone.json``.

    """
    victims = [check_choice(v, "victims", VICTIM_CHOICES) for v in victims]
    if not victims:
        raise InvalidArgumentError("victims must name at least one victim, got none")
    size = study_size(budgets=budgets, seeds=seeds, epochs=epochs, quick=quick)
    budgets = tuple(check_budget(b, DIGITS_CLASSES, "budgets") for b in size.budgets)
    defences = [check_choice(d, "defences", DEFENCE_NAMES) for d in defences]
    seeds = check_int(size.seeds, "seeds")
    epochs = check_int(size.epochs, "epochs")
    queries = check_choice(queries, "queries", QUERY_CHOICES)  # type: ignore[assignment]
    if query_budget is None and queries == "jacobian":
        query_budget = 800
    if query_budget is not None:
        query_budget = check_int(query_budget, "query_budget")
    seed = check_seed(seed) or 0
    settings = CloneStudySettings(
        budgets=budgets,
        seeds=seeds,
        defences=tuple(defences),
        augmentation="jacobian" if queries == "jacobian" else "none",
        query_budget=query_budget,
        epochs=epochs,
        base_seed=seed,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[dict[str, Any]] = []
    described: dict[str, Any] = {}
    for name in victims:
        victim = (
            deep_rbm_victim(seed=seed, queries=queries, cloner=cloner)
            if name == "deep-rbm"
            else digits_cnn_victim(
                seed=seed,
                queries=queries,
                fit_reverse=any(d.startswith("fisher") for d in defences),
            )
        )
        with torch.no_grad():
            accuracy = float(
                (victim.model(victim.test_x).argmax(1) == victim.test_y).double().mean()
            )
        described[name] = {
            "test_accuracy": accuracy,
            "queries": int(victim.queries_x.shape[0]) if victim.queries_x is not None else None,
            "test_inputs": int(victim.test_x.shape[0]),
            "transfer_eps_linf": victim.transfer_eps,
            "trainer": repr(victim.trainer) if victim.trainer is not None else "soft cross-entropy",
        }
        logger.info("%s: victim test accuracy %.1f%%", name, 100 * accuracy)
        cells.extend(clone_study(victim, settings, out / "cells", resume=resume))
    rows = summarise_cells(cells)
    comparison = [
        row | {"defence": name}
        for name in ("fisher", "fisher_eigenvector")
        if name in defences and "random" in defences
        for row in paired_comparison(cells, name, "random")
    ]
    figure = plot_clone_damage(rows, out / "clone_damage.png")
    recorded_settings = {
        "victims": victims,
        "budgets": list(budgets),
        "seeds": seeds,
        "defences": list(defences),
        "queries": queries,
        "query_budget": query_budget,
        "epochs": epochs,
        "cloner": cloner,
        "seed": seed,
    }
    record: dict[str, Any] = {
        "schema_version": CLONE_SCHEMA_VERSION,
        "vulnscope_version": __version__,
        "settings": recorded_settings,
        "victims": described,
        "rows": rows,
        "fisher_vs_random": comparison,  # Fisher minus random, paired by seed
        "cells": cells,
        "figures": {"clone_damage": figure.name},
    }
    write_json_atomic(out / "clone.json", record)
    return record
