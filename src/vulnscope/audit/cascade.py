"""The audit's robustness stage: the standard cascade on one chunk, and the chunks merged.

A chunk's result is a set of counts (points robust, points each attack broke, attack
calls) that add up across chunks, so an audit can be checkpointed, resumed and sharded
chunk by chunk and still report one curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from vulnscope.evaluate import predict, standard_evaluation_curve

__all__ = ["evaluate_cascade_chunk", "merge_cascade_chunks"]


def evaluate_cascade_chunk(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilons: Sequence[float],
    seed: int,
    attacks: Sequence[str],
    batch_size: int | None,
    on_budget: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """The cascade on one chunk (x: (B, ...), y: (B,)), as JSON-ready counts.

    ``on_budget`` is called as each budget's evaluation ends (for progress).

    Returns:
        ``{"samples", "correct", "evaluations", "seconds"}``; one evaluation per budget in
        ``epsilons`` (all > 0) with the robust and clean counts, the points each attack
        broke, each attack's calls, the masking checks and their warnings.

    """
    started = time.perf_counter()
    evaluations = []
    if not epsilons:
        correct = int((predict(model, x, batch_size=batch_size) == y).sum())
    else:
        curve = standard_evaluation_curve(
            model,
            x,
            y,
            norm=norm,
            epsilons=list(epsilons),
            seed=seed,
            attacks=attacks,
            batch_size=batch_size,
            on_budget=on_budget,
            shard=False,
        )
        for evaluation in curve.evaluations:
            summary = evaluation.to_dict()
            evaluations.append(
                {
                    "eps": evaluation.eps,
                    "robust": int(evaluation.robust.sum()),
                    "clean": x.shape[0] - summary["broken_by"].get("clean", 0),
                    "broken_by": summary["broken_by"],
                    "stages": summary["stages"],
                    "checks": summary["checks"],
                    "warnings": summary["warnings"],
                    "seconds": {stage.name: round(stage.seconds, 3) for stage in evaluation.stages},
                }
            )
        correct = evaluations[0]["clean"]  # the cascade classified the clean points already
    seconds = round(time.perf_counter() - started, 3)
    return {
        "samples": x.shape[0],
        "correct": correct,
        "evaluations": evaluations,
        "seconds": seconds,
    }


def merge_cascade_chunks(
    chunks: Sequence[dict[str, Any]], *, norm: str, epsilons: Sequence[float], samples: int
) -> dict[str, Any]:
    """Add the chunks' counts up into one curve's figures.

    Returns:
        ``{"clean_accuracy", "evaluations", "warnings", "stage_seconds", "seconds"}``,
        the evaluations in the layout of :meth:`StandardEvaluation.to_dict`.

    """
    evaluations = []
    warnings: list[str] = []
    stage_seconds: dict[str, dict[str, float]] = {}
    for position, eps in enumerate(epsilons):
        parts = [chunk["evaluations"][position] for chunk in chunks]
        broken: dict[str, int] = {}
        checks: dict[str, bool] = {}
        stages: list[dict[str, Any]] = []
        seconds: dict[str, float] = {}
        messages: list[str] = []
        for part in parts:
            for name, count in part["broken_by"].items():
                broken[name] = broken.get(name, 0) + count
            for name, fired in part["checks"].items():
                checks[name] = checks.get(name, False) or fired
            for index, stage in enumerate(part["stages"]):
                if index == len(stages):
                    stages.append(dict(stage))
                else:
                    for key in ("attacked", "broken", "forward_evals", "gradient_evals"):
                        stages[index][key] += stage[key]
            for name, value in part["seconds"].items():
                seconds[name] = round(seconds.get(name, 0.0) + value, 3)
            messages += [message for message in part["warnings"] if message not in messages]
        evaluations.append(
            {
                "norm": norm,
                "eps": eps,
                "robust_accuracy": sum(part["robust"] for part in parts) / samples,
                "clean_accuracy": sum(part["clean"] for part in parts) / samples,
                "broken_by": broken,
                "stages": stages,
                "checks": checks,
                "warnings": messages,
            }
        )
        stage_seconds[f"{eps:g}"] = seconds
        warnings += [message for message in messages if message not in warnings]
    return {
        "clean_accuracy": sum(chunk["correct"] for chunk in chunks) / samples,
        "evaluations": evaluations,
        "warnings": warnings,
        "stage_seconds": stage_seconds,
        "seconds": round(sum(chunk["seconds"] for chunk in chunks), 3),
    }
