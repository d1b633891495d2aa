"""The minimal-perturbation attacks and the standard cascade beside Foolbox, torchattacks, ART.

Prints, measured side by side in one run on the same model and the same batch (absolute
times on a shared machine mean little; ratios are paired within each round):

1. C&W L2 (``--cw-steps`` Adam steps, ``--cw-searches`` binary-search steps, the same for
   both) against Foolbox's ``L2CarliniWagnerAttack``: success rate, median L2 norm over
   the correctly classified points (a failure counts as infinite), time ratio
   (target: median no larger, at most 0.7x).
2. DeepFool L2 and L∞ (50 steps, 10 candidates, overshoot 0.02) against Foolbox's
   ``L2DeepFoolAttack`` / ``LinfDeepFoolAttack``: the same figures (same targets).
3. The standard cascade (``standard_evaluation``: APGD-CE, APGD-T, FAB-T, Square)
   against torchattacks' ``AutoAttack`` (standard version) at L∞ eps 0.1 and L2 eps 0.5:
   robust accuracy (target: at most AutoAttack's plus 0.5 points) and time ratio (target:
   at most 0.7x).
4. JSMA (theta 1, gamma 0.1, random targets) beside ART's ``SaliencyMapMethod`` with the
   same settings and targets: success rate, mean fraction of changed features, time.

Peers that are not installed are reported and skipped.

    python benchmarks/attacks_vs_peers.py [--repeats 3] [--samples 397] [--json out.json]
        [--only cw,deepfool,cascade,jsma]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from timing import timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.attacks import JSMA, CarliniWagner, DeepFool
from vulnscope.data import load_digits
from vulnscope.evaluate import standard_evaluation
from vulnscope.models import pretrained

SECTIONS = ("cw", "deepfool", "cascade", "jsma")
CASCADE_EPS = {"linf": 0.1, "l2": 0.5}


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of the time ratio, paired within each round."""
    return statistics.median(
        a / b for a, b in zip(times[numerator], times[denominator], strict=True)
    )


def norms_of(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def median_norm(model, x, y, x_adv, norm: str) -> tuple[float, float]:
    """Success rate and median norm over the correctly classified points (failures: inf)."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    sizes = torch.where(fooled, norms_of(x, x_adv, norm), torch.tensor(float("inf")))[correct]
    return float(fooled[correct].double().mean()), float(sizes.median())


def foolbox_runner(attack: Any, model, x, y) -> Callable[[], torch.Tensor]:
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))

    def run() -> torch.Tensor:
        raw, _, _ = attack(fmodel, x, y, epsilons=None)
        return raw

    return run


def compare_minimal(
    title: str, ours: Callable[[], torch.Tensor], peer_name: str, peer: Callable[[], Any] | None,
    model, x, y, norm: str, repeats: int, targets: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    contenders = {"vulnscope": ours}
    if peer is not None:
        contenders[peer_name] = peer
    outputs = {name: run() for name, run in contenders.items()}  # warm-up, and the figures
    times = timed_rounds(contenders, repeats)
    print(f"\n{title}")
    print(f"  {'implementation':<14}{'success':>9}{'median ' + norm:>14}{'time':>9}{'ratio':>8}")
    record: dict[str, Any] = {}
    for name, x_adv in outputs.items():
        success, median = median_norm(model, x, y, x_adv, norm)
        ratio = paired_ratio(times, name, peer_name) if peer is not None else float("nan")
        record[name] = {"success": success, "median_norm": median, "time_ratio": ratio,
                        "median_seconds": statistics.median(times[name])}  # fmt: skip
        print(
            f"  {name:<14}{success:>9.1%}{median:>14.4f}"
            f"{statistics.median(times[name]):>8.2f}s{ratio:>7.2f}x"
        )
    if peer is None:
        print(f"  {peer_name:<14}not installed (see benchmarks/README.md)")
    else:
        ours_median, peer_median = (
            record["vulnscope"]["median_norm"],
            record[peer_name]["median_norm"],
        )
        print(
            f"  targets: median no larger ({ours_median:.4f} vs {peer_median:.4f}: "
            f"{'met' if ours_median <= peer_median else 'MISSED'}), time at most "
            f"{targets['time']:.1f}x ({record['vulnscope']['time_ratio']:.2f}x: "
            f"{'met' if record['vulnscope']['time_ratio'] <= targets['time'] else 'MISSED'})"
        )
    return record


def section_cw(model, x, y, args) -> dict[str, Any]:
    ours = CarliniWagner(
        norm="l2", steps=args.cw_steps, binary_search_steps=args.cw_searches, confidence=0.0,
        seed=0,
    )  # fmt: skip
    peer = None
    try:
        import foolbox

        attack = foolbox.attacks.L2CarliniWagnerAttack(
            binary_search_steps=args.cw_searches, steps=args.cw_steps, stepsize=0.01,
            confidence=0, initial_const=1e-3, abort_early=True,
        )  # fmt: skip
        peer = foolbox_runner(attack, model, x, y)
    except ImportError:
        pass
    return compare_minimal(
        f"C&W L2, {args.cw_searches} binary-search steps x {args.cw_steps} Adam steps",
        lambda: ours(model, x, y).x_adv, "foolbox", peer, model, x, y, "l2", args.repeats,
        {"time": 0.7},
    )  # fmt: skip


def section_deepfool(model, x, y, args) -> dict[str, Any]:
    record = {}
    for norm in ("l2", "linf"):
        ours = DeepFool(norm=norm, steps=50, overshoot=0.02, candidates=10)
        peer = None
        try:
            import foolbox

            cls = (
                foolbox.attacks.L2DeepFoolAttack
                if norm == "l2"
                else foolbox.attacks.LinfDeepFoolAttack
            )
            peer = foolbox_runner(cls(steps=50, candidates=10, overshoot=0.02), model, x, y)
        except ImportError:
            pass
        record[norm] = compare_minimal(
            f"DeepFool {norm}, 50 steps, 10 candidates, overshoot 0.02",
            lambda ours=ours: ours(model, x, y).x_adv, "foolbox", peer, model, x, y, norm,
            args.repeats, {"time": 0.7},
        )  # fmt: skip
    return record


def section_cascade(model, x, y, args) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for norm, eps in CASCADE_EPS.items():
        contenders: dict[str, Callable[[], Any]] = {
            "vulnscope": lambda norm=norm, eps=eps: standard_evaluation(
                model, x, y, norm=norm, eps=eps, seed=0
            )
        }
        try:
            import torchattacks

            autoattack = torchattacks.AutoAttack(
                model, norm="Linf" if norm == "linf" else "L2", eps=eps, version="standard",
                n_classes=10, seed=0,
            )  # fmt: skip
            contenders["torchattacks"] = lambda autoattack=autoattack: autoattack(x, y)
        except ImportError:
            pass
        ours_report = contenders["vulnscope"]()
        accuracy = {"vulnscope": ours_report.robust_accuracy}
        if "torchattacks" in contenders:
            with torch.no_grad():
                peer_adv = contenders["torchattacks"]()
                accuracy["torchattacks"] = float((model(peer_adv).argmax(1) == y).double().mean())
        times = timed_rounds(contenders, args.repeats)
        print(f"\nstandard cascade vs AutoAttack (standard), {norm} eps {eps}")
        print(f"  {'implementation':<14}{'robust acc':>11}{'time':>9}{'ratio':>8}")
        for name in contenders:
            ratio = (
                paired_ratio(times, name, "torchattacks")
                if "torchattacks" in times
                else float("nan")
            )
            print(
                f"  {name:<14}{accuracy[name]:>11.1%}{statistics.median(times[name]):>8.1f}s"
                f"{ratio:>7.2f}x"
            )
        stages = ", ".join(f"{s.name} {s.broken}" for s in ours_report.stages)
        print(f"  broken by: {stages}; warnings: {len(ours_report.warnings)}")
        seconds = {name: statistics.median(t) for name, t in times.items()}
        entry: dict[str, Any] = {"robust_accuracy": accuracy, "median_seconds": seconds}
        if "torchattacks" in times:
            entry["time_ratio"] = paired_ratio(times, "vulnscope", "torchattacks")
            gap = 100 * (accuracy["vulnscope"] - accuracy["torchattacks"])
            print(
                f"  targets: robust accuracy at most +0.5 points ({gap:+.1f}: "
                f"{'met' if gap <= 0.5 else 'MISSED'}), time at most 0.7x "
                f"({entry['time_ratio']:.2f}x: {'met' if entry['time_ratio'] <= 0.7 else 'MISSED'})"
            )
        record[norm] = entry
    return record


def section_jsma(model, x, y, args) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    target = (y + torch.randint(1, 10, y.shape, generator=generator)) % 10
    ours = JSMA(theta=1.0, gamma=0.1, targeted=True)
    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "vulnscope": lambda: ours(model, x, y, target=target).x_adv
    }
    try:
        from art.attacks.evasion import SaliencyMapMethod
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu",
        )  # fmt: skip
        art = SaliencyMapMethod(
            classifier, theta=1.0, gamma=0.1, batch_size=x.shape[0], verbose=False
        )
        one_hot = np.eye(10, dtype=np.float32)[target.numpy()]
        contenders["ART"] = lambda: torch.from_numpy(art.generate(x.numpy(), y=one_hot))
    except ImportError:
        pass
    outputs = {name: run() for name, run in contenders.items()}
    times = timed_rounds(contenders, args.repeats)
    print("\nJSMA, theta 1, gamma 0.1, random targets")
    print(f"  {'implementation':<14}{'success':>9}{'changed':>10}{'time':>9}{'ratio':>8}")
    record: dict[str, Any] = {}
    for name, x_adv in outputs.items():
        with torch.no_grad():
            hit = model(x_adv).argmax(1) == target
        changed = float((x_adv != x).flatten(1).double().mean(1).mean())
        ratio = paired_ratio(times, name, "ART") if "ART" in times else float("nan")
        record[name] = {"success": float(hit.double().mean()), "changed_fraction": changed,
                        "time_ratio": ratio}  # fmt: skip
        print(
            f"  {name:<14}{float(hit.double().mean()):>9.1%}{changed:>10.3f}"
            f"{statistics.median(times[name]):>8.2f}s{ratio:>7.2f}x"
        )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--samples", type=int, default=397)
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-searches", type=int, default=9)
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model = pretrained("digits-cnn")
    data = load_digits("test").take(args.samples)
    x, y = data.x, data.y
    print(
        f"digits CNN, {x.shape[0]} test images; {args.repeats} rounds, ratios paired within "
        f"each round (median shown); torch threads {torch.get_num_threads()}"
    )
    sections = {"cw": section_cw, "deepfool": section_deepfool, "cascade": section_cascade,
                "jsma": section_jsma}  # fmt: skip
    record = {}
    for name in args.only.split(","):
        record[name] = sections[name](model, x, y, args)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
