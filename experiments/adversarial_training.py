"""Adversarial training, TRADES, CURE, Parseval and Manifold Mixup on the digits CNN.

Run:  VULNSCOPE_CACHE_DIR=/tmp/vcache python experiments/adversarial_training.py [--out DIR]

For each method (the reference recipe ``none``, PGD adversarial training, fast FGSM
training, TRADES, CURE, Parseval, Manifold Mixup), :func:`vulnscope.defences.digits.
defend_digits` trains the digits CNN and this script measures on the 397 test images:

- clean accuracy, and robust accuracy under the standard cascade (APGD-CE, APGD-T,
  FAB-T, Square 5000, then the FGSM check) at L∞ ``--eps`` (default 0.1), with the
  cascade's gradient-masking warnings;
- the curvature of the loss in input space: the top 10 eigenvalues of the input Hessian
  (exact Lanczos, median over ``--curvature-samples`` test images: the eigenvalue profile
  of the Fawzi talk, slide 15; for a ReLU network the Hessian has rank at most 9), and
  the finite-difference curvature ``||∇ℓ(x + h z) - ∇ℓ(x)|| / h`` along the gradient sign
  at ``h = 0.5`` (the scale an attacker at eps 0.1 in L∞ moves: 0.1 · 8 = 0.8 in L2).

Each method's model (TorchScript) and result are kept in ``OUT/models`` and ``OUT/cells``
and reused by a rerun (``--fresh`` recomputes). Writes ``OUT/adversarial_training.json``,
``OUT/hessian_profiles.png`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from vulnscope._io import write_json_atomic
from vulnscope._plotting import new_figure, save_png
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.defences import curvature_penalty
from vulnscope.defences.digits import defend_digits
from vulnscope.diagnostics import input_hessian_eigenvalues
from vulnscope.evaluate import standard_evaluation
from vulnscope.models import load_model, save_torchscript

METHODS = ("none", "pgd", "fgsm", "trades", "cure", "parseval", "mixup")
LABELS = {
    "none": "standard training",
    "pgd": "PGD adversarial training (Madry)",
    "fgsm": "fast FGSM training (Wong)",
    "trades": "TRADES (beta 6)",
    "cure": "CURE",
    "parseval": "Parseval (retraction)",
    "mixup": "Manifold Mixup",
}


def _model(method: str, out: Path, eps: float, seed: int, fresh: bool) -> tuple[Any, float]:
    path = out / "models" / f"{method}.pt"
    if path.is_file() and not fresh:
        return load_model(str(path)), float("nan")
    start = time.perf_counter()
    defended = defend_digits(method, eps=eps, seed=seed)
    seconds = time.perf_counter() - start
    save_torchscript(defended.model, path, metadata={"method": method, **defended.settings})
    return defended.model, seconds


def _robustness(model: Any, method: str, eps: float, seed: int) -> dict[str, Any]:
    test = load_digits("test")
    evaluation = standard_evaluation(model, test.x, test.y, norm="linf", eps=eps, seed=seed)
    broken: dict[str, int] = {}
    for name in evaluation.broken_by:
        if name is not None:
            broken[name] = broken.get(name, 0) + 1
    return {
        "method": method,
        "clean_accuracy": evaluation.clean_accuracy,
        "robust_accuracy": evaluation.robust_accuracy,
        "broken_by": broken,
        "warnings": list(evaluation.warnings),
    }


def _profile(model: Any, x: torch.Tensor, y: torch.Tensor, seed: int) -> list[float]:
    hessian = input_hessian_eigenvalues(model, x, y, k=10, steps=64, seed=seed)
    return [float(v) for v in hessian.eigenvalues.abs().median(dim=0).values]


def _curvature(model: Any, eps: float, samples: int, seed: int) -> dict[str, Any]:
    test = load_digits("test")
    x, y = test.x[:samples], test.y[:samples]
    with torch.enable_grad():
        _, penalties = curvature_penalty(model, x, y, h=0.5)
    # where the attacker goes: the end of 20 PGD steps (classic, not early-stopped)
    x_pgd = PGD(eps=eps, steps=20, seed=seed)(model, x, y).x_adv
    return {
        "hessian_top10_median": _profile(model, x, y, seed),
        "hessian_top10_median_at_pgd": _profile(model, x_pgd, y, seed),
        "finite_difference_curvature_median": float((penalties.detach().sqrt() / 0.5).median()),
    }


def main() -> None:
    """Train, measure and tabulate each method (cached cells are reused)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiment-adversarial-training"))
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--curvature-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="retrain and re-measure")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    for method in methods:
        cells = {
            name: args.out / "cells" / f"{method}-{name}.json"
            for name in ("robustness", "curvature")
        }
        if args.fresh or not all(path.is_file() for path in cells.values()):
            model, seconds = _model(method, args.out, args.eps, args.seed, args.fresh)
            for name in ("robustness", "curvature"):
                if cells[name].is_file() and not args.fresh:
                    continue
                start = time.perf_counter()
                if name == "robustness":
                    part = _robustness(model, method, args.eps, args.seed)
                else:
                    part = _curvature(model, args.eps, args.curvature_samples, args.seed)
                part[f"{name}_seconds"] = time.perf_counter() - start
                if seconds == seconds:  # trained in this run (nan when loaded)
                    part["train_seconds"] = seconds
                write_json_atomic(cells[name], part)
        row: dict[str, Any] = {}
        for path in cells.values():
            row.update(json.loads(path.read_text()))
        rows.append(row)
        print(
            f"{method}: clean {row['clean_accuracy']:.1%}, robust {row['robust_accuracy']:.1%}",
            flush=True,
        )
    record = {"eps": args.eps, "norm": "linf", "seed": args.seed, "rows": rows}
    write_json_atomic(args.out / "adversarial_training.json", record)
    _plot(rows, args.out / "hessian_profiles.png")
    baseline = next((r["robust_accuracy"] for r in rows if r["method"] == "none"), None)
    print(
        f"\n| method | clean | robust (cascade, L∞ {args.eps:g}) | vs standard | "
        "top Hessian eigenvalue at x | at PGD x' | FD curvature (h 0.5) | "
        "masking warnings |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = "" if baseline is None else f"{100 * (r['robust_accuracy'] - baseline):+.1f}"
        top, at_pgd = r["hessian_top10_median"], r["hessian_top10_median_at_pgd"]
        print(
            f"| {LABELS.get(r['method'], r['method'])} | {r['clean_accuracy']:.1%} | "
            f"{r['robust_accuracy']:.1%} | {gain} | {top[0]:.3g} | {at_pgd[0]:.3g} | "
            f"{r['finite_difference_curvature_median']:.3g} | "
            f"{len(r['warnings'])} |"
        )


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axes = new_figure(1, 3, size=(16.0, 4.4))
    at_x, at_pgd, finite = axes[0]
    panels = (
        (at_x, "hessian_top10_median", "the clean test images"),
        (at_pgd, "hessian_top10_median_at_pgd", "PGD points, L∞ 0.1"),
    )
    for ax, key, where in panels:
        for r in rows:
            values = r[key]
            ax.semilogy(
                range(1, len(values) + 1),
                [max(v, 1e-14) for v in values],
                marker="o",
                label=LABELS.get(r["method"], r["method"]),
            )
        ax.set_xlabel("eigenvalue number")
        ax.set_ylabel("|eigenvalue| (median over 100 images)")
        ax.set_title(f"input Hessian at {where}")
    at_x.legend(fontsize=7)
    names = [LABELS.get(r["method"], r["method"]) for r in rows]
    finite.barh(names, [r["finite_difference_curvature_median"] for r in rows], color="C3")
    finite.set_xscale("log")
    finite.invert_yaxis()
    finite.set_xlabel("||∇ℓ(x + h z) - ∇ℓ(x)|| / h, h = 0.5 (median)")
    finite.set_title("curvature at the attack's scale (CURE)")
    save_png(figure, path)


if __name__ == "__main__":
    main()
