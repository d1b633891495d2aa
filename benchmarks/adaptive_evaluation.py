"""adaptive_evaluation beside the standard cascade and AutoAttack's standard version.

Prints, measured side by side in one run on the same model and the same points (the
pretrained digits CNN and MLP, the digits test split), one thread for every contender
(``torch.set_num_threads(1)``), timed in CPU seconds of the process by default (on one
thread what a quiet machine's wall clock shows; on a shared machine the wall clock also
counts the time other processes held the core; ``--clock wall`` for the wall clock):

1. ``single``: at L∞ 0.1 and L2 0.5, ``adaptive_evaluation`` (Liu et al. 2022, A³),
   ``standard_evaluation`` (AutoAttack's four attacks, Croce and Hein 2020) and
   torchattacks' attacks configured as the original AutoAttack's standard version (below):
   robust accuracy of each (target: adaptive at most the lowest of the others plus 0.5
   points) and the time ratios adaptive / standard and adaptive / torchattacks (target:
   at most 0.5x), each the median over ``--repeats`` rotating rounds of the ratio paired
   within the round.
2. ``curve``: the same at five budgets (L∞ 0.02, 0.05, 0.1, 0.15, 0.2; L2 0.25, 0.5,
   0.75, 1.0, 1.5): ``adaptive_evaluation_curve``, ``standard_evaluation_curve``, and
   torchattacks run once per budget; robust accuracy per budget and the time ratios over
   the whole curve (target: at most 0.3x).
3. ``check``: the one place where the torchattacks configuration departs from
   torchattacks' own classes (APGD-T, see below) is checked against ``torchattacks.APGDT``
   on the first points: the same adversarial examples at L∞; at L2 the difference its
   shared step size makes.

Per attack, the seconds and the points attacked and broken of both vulnscope cascades
are printed (``StandardEvaluation.stages``), to show where the time goes.

**AutoAttack's standard version, step for step.** The original (github.com/fra31/
auto-attack, ``AutoAttack(version="standard")``) is not on PyPI; torchattacks 3.5.1
ports its attacks, and ``autoattack_standard`` below configures them as the original's
``set_version("standard")`` does for L∞ and L2 (torchattacks' defaults differ: its
``AutoAttack`` runs 10 iterations):

- APGD-CE: ``torchattacks.APGD(steps=100, n_restarts=1, loss="ce", eot_iter=1,
  rho=0.75)``, as the original's ``APGDAttack(n_iter=100, n_restarts=1, eot_iter=1,
  rho=.75)``: step size 2 eps, momentum 0.75, checkpoints every 22, then 3 fewer down to
  6 iterations; the same code but for a 1e-12 in the L∞ start's normalisation.
- APGD-T: 100 iterations, 1 restart, eot_iter 1, rho 0.75, the targeted DLR loss, the 2nd
  to 10th most likely classes (``n_target_classes=9``) as targets one after another, each
  on the points still robust, the targets ranked by the logits at those points.
  ``torchattacks.APGDT`` takes the number of classes (``n_classes=10`` gives the 9
  targets; ``n_classes=9`` would drop the last), and at L2 its step multiplies every
  point's gradient by the first point's step size (``step_size[0]``), so that all steps
  halve when that point's does; the original keeps one step size per point. So APGD-T
  here is ``torchattacks.APGD``'s loop (one step size per point, otherwise the same
  lines as ``APGDT``'s) on the original's targeted DLR loss with its target loop
  (``_TargetedAPGD``); ``check`` shows it returns the same examples as ``APGDT`` at L∞.
- FAB-T: ``torchattacks.FAB(steps=100, n_restarts=1, multi_targeted=True, n_classes=10,
  alpha_max=0.1, eta=1.05, beta=0.9)``, as the original's ``FABAttack_PT(n_iter=100,
  n_restarts=1, n_target_classes=9, targeted=True)`` with its default alpha_max, eta,
  beta: the first restart starts at the input, and the projections are the original's
  line for line.
- Square: ``torchattacks.Square(n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
  resc_schedule=False)``, as the original's ``SquareAttack(p_init=.8, n_queries=5000,
  n_restarts=1, resc_schedule=False)``. torchattacks' default ``resc_schedule=True``
  rescales the schedule of the square size to 10,000 queries: at 5000 the squares shrink
  twice as early. The original also caps a square's side at the image's; at p_init 0.8
  on 8x8 images the side is at most 7, so the cap never binds here.
- The cascade: ``torchattacks.MultiAttack`` runs each attack on the points the earlier
  ones left robust and counts a point broken when the model misclassifies what the
  attack returned, as the original's ``run_standard_evaluation``. The original splits the
  points into batches of ``bs`` (250 by default); every contender here gets all the
  points in one batch (``batch_size=None`` for vulnscope). Each attack reseeds torch's
  generator with its seed (0 here), as in the original. The original's input checks
  (a few forward passes) are not run.

    python benchmarks/adaptive_evaluation.py [--repeats 3] [--samples 397]
        [--models cnn,mlp] [--norms linf,l2] [--only check,single,curve]
        [--clock cpu|wall] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from timing import paired_ratio, timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.data import load_digits
from vulnscope.evaluate import (
    adaptive_evaluation,
    adaptive_evaluation_curve,
    standard_evaluation,
    standard_evaluation_curve,
)
from vulnscope.models import pretrained

MODELS = {"cnn": "digits-cnn", "mlp": "digits-mlp"}
SECTIONS = ("check", "single", "curve")
SINGLE = {"linf": 0.1, "l2": 0.5}
CURVE = {"linf": (0.02, 0.05, 0.1, 0.15, 0.2), "l2": (0.25, 0.5, 0.75, 1.0, 1.5)}
TARGETS = {"points": 0.5, "single": 0.5, "curve": 0.3}
CHECK_POINTS = 40
WARM_UP_POINTS = 8
PEER = "torchattacks"
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _targeted_apgd(torchattacks: Any) -> type:
    """The original's APGD-T on ``torchattacks.APGD``'s loop (see the module docstring)."""

    class _TargetedAPGD(torchattacks.APGD):
        def __init__(self, model, *, norm, eps, steps, n_target_classes, seed):
            super().__init__(
                model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="dlr"
            )
            self.n_target_classes = n_target_classes
            self.y_target = None

        def dlr_loss(self, x, y):
            # autopgd_base.APGDAttack_targeted.dlr_loss_targeted
            x_sorted = x.sort(dim=1)[0]
            u = torch.arange(x.shape[0])
            return -(x[u, y] - x[u, self.y_target]) / (
                x_sorted[:, -1] - 0.5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12
            )

        def perturb(self, x, y, best_loss=False, cheap=True):
            # autopgd_base.APGDAttack_targeted.perturb with n_restarts=1
            with torch.no_grad():
                robust = self.get_logits(x).argmax(1) == y
            adv = x.clone()
            torch.random.manual_seed(self.seed)
            for target_class in range(2, self.n_target_classes + 2):
                rows = robust.nonzero().flatten()
                if rows.numel() == 0:
                    break
                with torch.no_grad():
                    logits = self.get_logits(x[rows])
                self.y_target = logits.sort(dim=1)[1][:, -target_class]
                _, still, _, found = self.attack_single_run(x[rows], y[rows])
                robust[rows[~still]] = False
                adv[rows[~still]] = found[~still]
            return robust, adv

    return _TargetedAPGD


def autoattack_standard(
    model: torch.nn.Module, *, norm: str, eps: float, num_classes: int, seed: int = 0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torchattacks' attacks as the original AutoAttack's standard version (docstring above).

    Raises ImportError when torchattacks is not installed.
    """
    import torchattacks

    name = {"linf": "Linf", "l2": "L2"}[norm]
    common = {"norm": name, "eps": eps, "seed": seed}
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(
                model, steps=100, n_restarts=1, loss="ce", eot_iter=1, rho=0.75, **common
            ),
            _targeted_apgd(torchattacks)(
                model, steps=100, n_target_classes=num_classes - 1, **common
            ),
            torchattacks.FAB(
                model,
                steps=100,
                n_restarts=1,
                multi_targeted=True,
                n_classes=num_classes,
                alpha_max=0.1,
                eta=1.05,
                beta=0.9,
                **common,
            ),
            torchattacks.Square(
                model,
                n_queries=5000,
                n_restarts=1,
                p_init=0.8,
                loss="margin",
                resc_schedule=False,
                **common,
            ),
        ]
    )


def peer_robust(model, x_adv, x, y, norm: str, eps: float) -> tuple[torch.Tensor, int]:
    """(N,) the points a peer's examples leave robust, and how many lie outside the ball."""
    with torch.no_grad():
        correct = model(x_adv).argmax(1) == y
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    return correct, int((size > eps * (1 + 1e-5)).sum())


def run_section(model, x, y, norm: str, args, peer, section: str) -> dict[str, Any]:
    """The contenders side by side at one budget (``single``) or five (``curve``).

    Prints robust accuracy per budget, the points the adaptive evaluation leaves robust
    that another contender broke, the paired time ratios against the target, and where
    each vulnscope cascade spent its time (seconds per attack, points attacked/broken).
    """
    epsilons = (SINGLE[norm],) if section == "single" else CURVE[norm]
    target = TARGETS[section]
    if section == "single":
        contenders: dict[str, Callable[[], Any]] = {
            "adaptive": lambda: [
                adaptive_evaluation(model, x, y, norm=norm, eps=epsilons[0], seed=0)
            ],
            "standard": lambda: [
                standard_evaluation(model, x, y, norm=norm, eps=epsilons[0], seed=0)
            ],
        }
    else:
        contenders = {
            "adaptive": lambda: (
                adaptive_evaluation_curve(
                    model, x, y, norm=norm, epsilons=epsilons, seed=0
                ).evaluations
            ),
            "standard": lambda: (
                standard_evaluation_curve(
                    model, x, y, norm=norm, epsilons=epsilons, seed=0
                ).evaluations
            ),
        }
    if peer is not None:
        # run once per budget, each from scratch, as a user of AutoAttack would
        contenders[PEER] = lambda: [
            peer(model, norm=norm, eps=eps, num_classes=10)(x, y) for eps in epsilons
        ]
    outputs: dict[str, Any] = {}
    walls: dict[str, float] = {}  # the stages' seconds are wall-clock seconds

    def keep(name: str, run: Callable[[], Any]) -> Callable[[], None]:
        def timed() -> None:
            start = time.perf_counter()
            outputs[name] = run()
            walls[name] = time.perf_counter() - start

        return timed

    times = timed_rounds(
        {name: keep(name, run) for name, run in contenders.items()},
        args.repeats,
        clock=CLOCKS[args.clock],
    )
    robust = {name: [e.robust for e in outputs[name]] for name in ("adaptive", "standard")}
    outside = 0
    if PEER in outputs:
        robust[PEER] = []
        for x_adv, eps in zip(outputs[PEER], epsilons, strict=True):
            correct, out = peer_robust(model, x_adv, x, y, norm, eps)
            robust[PEER].append(correct)
            outside += out
    accuracy = {name: [float(r.double().mean()) for r in rs] for name, rs in robust.items()}
    others = [name for name in robust if name != "adaptive"]
    missed = [
        int((robust["adaptive"][i] & ~torch.stack([robust[o][i] for o in others]).all(0)).sum())
        for i in range(len(epsilons))
    ]
    seconds = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: paired_ratio(times, "adaptive", name) for name in others}
    gap = max(
        100 * (accuracy["adaptive"][i] - min(accuracy[o][i] for o in others))
        for i in range(len(epsilons))
    )
    points_met = gap <= TARGETS["points"] + 1e-9
    time_met = all(r <= target for r in ratio.values())

    print(f"\n{args.model_name}, {norm} eps {', '.join(map(str, epsilons))}")
    print(f"  {'contender':<14}{'robust accuracy':<36}{'time':>9}{'adaptive /':>12}")
    for name in robust:
        row = " ".join(f"{a:6.1%}" for a in accuracy[name])
        shown = f"{ratio[name]:>11.2f}x" if name in ratio else ""
        print(f"  {name:<14}{row:<36}{seconds[name]:>8.1f}s{shown}")
    print(
        f"  {'missed':<14}{' '.join(f'{m:>6}' for m in missed):<36}"
        "  points adaptive left robust that another broke"
    )
    print(
        f"  targets: robust accuracy at most the others' lowest +{TARGETS['points']} points "
        f"at every budget ({gap:+.1f}: {'met' if points_met else 'MISSED'}); time at most "
        f"{target}x of each ({', '.join(f'{r:.2f}x' for r in ratio.values())}: "
        f"{'met' if time_met else 'MISSED'})"
    )
    print("  per attack: wall seconds (points attacked, counted once per target, / broken)")
    for name in ("adaptive", "standard"):
        spent = 0.0
        for eps, evaluation in zip(epsilons, outputs[name], strict=True):
            spent += sum(s.seconds for s in evaluation.stages)
            stages = ", ".join(
                f"{s.name} {s.seconds:.1f}s ({s.attacked}/{s.broken})" for s in evaluation.stages
            )
            print(f"  {name} at {eps}: {stages}")
        print(f"  {name} outside the attacks: {walls[name] - spent:.1f}s of {walls[name]:.1f}s")
    if PEER in outputs:
        print(f"  {PEER}: {outside} examples outside the eps-ball")
    return {
        "epsilons": list(epsilons),
        "robust_accuracy": accuracy,
        "missed_points": missed,
        "median_seconds": seconds,
        "seconds": times,
        "last_round_wall_seconds": walls,
        "time_ratio": ratio,
        "accuracy_gap_points": gap,
        "targets_met": {"accuracy": points_met, "time": time_met},
        "peer_outside_ball": outside,
        "stages": {
            name: [[s.to_dict() for s in e.stages] for e in outputs[name]]
            for name in ("adaptive", "standard")
        },
    }


def section_check(model, x, y, norm: str, args, peer, section: str) -> dict[str, Any]:
    """The configuration beside what it stands for, on the first ``CHECK_POINTS`` points.

    Our APGD-T loop beside ``torchattacks.APGDT``; and, when the original's ``autoattack``
    package is importable (``pip install git+https://github.com/fra31/auto-attack``), the
    whole configuration beside the original's ``run_standard_evaluation``.
    """
    import torchattacks

    eps = SINGLE[norm]
    x, y = x[:CHECK_POINTS], y[:CHECK_POINTS]
    name = {"linf": "Linf", "l2": "L2"}[norm]
    pairs = {
        "APGD-T, ours / torchattacks.APGDT": (
            _targeted_apgd(torchattacks)(
                model, norm=name, eps=eps, steps=100, n_target_classes=9, seed=0
            ),
            torchattacks.APGDT(
                model, norm=name, eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0
            ),
        )
    }
    try:
        from autoattack import AutoAttack

        original = AutoAttack(
            model, norm=name, eps=eps, version="standard", seed=0, device="cpu", verbose=False
        )
        pairs["cascade, this configuration / the original"] = (
            autoattack_standard(model, norm=norm, eps=eps, num_classes=10),
            lambda x, y: original.run_standard_evaluation(x, y, bs=x.shape[0]),
        )
    except ImportError:
        print(f"\n(the original autoattack is not importable: {norm} checked against APGDT only)")
    record: dict[str, Any] = {}
    for label, (ours, theirs) in pairs.items():
        examples = [ours(x, y), theirs(x, y)]
        accuracy = [
            float(peer_robust(model, e, x, y, norm, eps)[0].double().mean()) for e in examples
        ]
        difference = float((examples[0] - examples[1]).abs().max())
        print(
            f"\n{args.model_name}, {norm} eps {eps}, {label} on {x.shape[0]} points: robust "
            f"accuracy {accuracy[0]:.1%} / {accuracy[1]:.1%}, examples differ by at most "
            f"{difference:.2g}"
        )
        record[label] = {"robust_accuracy": accuracy, "max_difference": difference}
    return record


def source_commit() -> str:
    """The checkout's commit, ``+`` when ``src`` has uncommitted changes (``?`` outside git)."""
    here = Path(__file__).resolve().parent

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=here, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "?"
    return commit + ("+" if git("status", "--porcelain", "--", str(here.parent / "src")) else "")


def write_json(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent or ".", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        json.dump(record, file, indent=2)
    os.replace(temporary, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--samples", type=int, default=397)
    parser.add_argument("--models", default="cnn,mlp", help=f"from {sorted(MODELS)}")
    parser.add_argument("--norms", default="linf,l2")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="the process's CPU time (on one thread, a quiet machine's wall clock) or wall",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        import torchattacks  # noqa: F401

        peer: Callable[..., Any] | None = autoattack_standard
    except ImportError:
        peer = None
    data = load_digits("test").take(args.samples)
    x, y = data.x, data.y
    commit = source_commit()
    print(
        f"vulnscope at {commit}; digits test split, {x.shape[0]} points; {args.repeats} "
        f"rounds, ratios paired within each round (median shown); {args.clock} time; torch threads "
        f"{torch.get_num_threads()} for every contender; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if peer is None:
        print(f"{PEER} is not installed (see benchmarks/README.md): compared with standard only")
    chosen = args.only.split(",")
    record: dict[str, Any] = {"commit": commit, "samples": x.shape[0], "repeats": args.repeats}
    for key in args.models.split(","):
        model = pretrained(MODELS[key])
        args.model_name = MODELS[key]
        # first calls (lazy imports, the certifier's graph) outside the timed rounds
        for norm in args.norms.split(","):
            adaptive_evaluation(model, x[:WARM_UP_POINTS], y[:WARM_UP_POINTS], norm=norm, eps=0.1)
        for section in chosen:
            if section == "check" and peer is None:
                continue
            for norm in args.norms.split(","):
                run = section_check if section == "check" else run_section
                entry = run(model, x, y, norm, args, peer, section)
                record.setdefault(key, {}).setdefault(section, {})[norm] = entry
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
