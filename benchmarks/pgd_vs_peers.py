"""PGD Linf beside torchattacks, Foolbox and ART, on the same model and the same batch.

Prints, measured side by side in one run (absolute times on a shared machine mean little):

1. PGD Linf, 40 steps of 0.01, no random start, eps 0.1: robust accuracy of every
   implementation (the same algorithm must agree within one point) and wall time as a
   ratio to a bare loop of 40 forward+backward passes (input gradients only).
2. ``robust_accuracy`` at one eps against the fastest peer's PGD.
3. ``robust_accuracy`` over five epsilons (0.02 ... 0.2) against the fastest peer run
   once per eps, with robust accuracy at every eps.

Each timing is the median of ``--repeats`` runs, interleaved so that drifting machine
load hits every row alike. Peers that are not installed are reported and skipped.

    python benchmarks/pgd_vs_peers.py [--repeats 7] [--samples 397] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from timing import timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.evaluate import robust_accuracy
from vulnscope.models import pretrained

STEPS, STEP_SIZE, EPS = 40, 0.01, 0.1
EPSILONS = [0.02, 0.05, 0.1, 0.15, 0.2]

Runner = Callable[[float], torch.Tensor]  # eps -> x_adv


def bare_loop(model, x, y) -> Runner:
    """STEPS forward+backward passes with respect to the input, nothing else."""

    def run(eps: float) -> torch.Tensor:
        x_adv = x.clone()
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            (_grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
            x_adv = x_adv.detach()
        return x_adv

    return run


def ours(model, x, y) -> Runner:
    return lambda eps: (
        PGD(eps=eps, steps=STEPS, step_size=STEP_SIZE, random_start=False)(model, x, y).x_adv
    )


def torchattacks_pgd(model, x, y) -> Runner:
    import torchattacks

    return lambda eps: torchattacks.PGD(
        model, eps=eps, alpha=STEP_SIZE, steps=STEPS, random_start=False
    )(x, y)


def foolbox_pgd(model, x, y) -> Runner:
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))
    attack = foolbox.attacks.LinfPGD(abs_stepsize=STEP_SIZE, steps=STEPS, random_start=False)

    def run(eps: float) -> torch.Tensor:
        _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
        return clipped

    return run


def art_pgd(model, x, y) -> Runner:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    x_np, y_np = x.numpy(), y.numpy()

    def run(eps: float) -> torch.Tensor:
        attack = ProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=eps,
            eps_step=STEP_SIZE,
            max_iter=STEPS,
            num_random_init=0,
            batch_size=x.shape[0],
            verbose=False,
        )
        return torch.from_numpy(attack.generate(x_np, y_np))

    return run


PEERS = {"torchattacks": torchattacks_pgd, "foolbox": foolbox_pgd, "ART": art_pgd}


def robust(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).double().mean())


def paired_ratio(
    times: dict[str, list[float]], numerator: list[str], denominator: list[str]
) -> float:
    """Median over rounds of (sum of numerator times) / (sum of denominator times)."""
    rounds = len(times[numerator[0]])
    return statistics.median(
        sum(times[n][r] for n in numerator) / sum(times[d][r] for d in denominator)
        for r in range(rounds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--samples", type=int, default=397)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    model = pretrained("digits-cnn")
    data = load_digits("test").take(args.samples)
    x, y = data.x, data.y

    runners: dict[str, Runner] = {
        "bare loop": bare_loop(model, x, y),
        "vulnscope": ours(model, x, y),
    }
    missing = []
    for name, build in PEERS.items():
        try:
            runners[name] = build(model, x, y)
        except ImportError:
            missing.append(name)
    peers = [name for name in runners if name in PEERS]
    accuracy = {
        name: robust(model, run(EPS), y) for name, run in runners.items() if name != "bare loop"
    }
    warm = {
        name: timed_rounds({name: lambda run=run: run(EPS)}, 2)[name][-1]
        for name, run in runners.items()
    }
    fastest = min(peers, key=warm.__getitem__) if peers else None

    attack = PGD(steps=STEPS, step_size=STEP_SIZE, random_start=False)
    contenders: dict[str, Callable[[], object]] = {
        name: (lambda run=run: run(EPS)) for name, run in runners.items()
    }
    contenders["curve, 1 eps"] = lambda: robust_accuracy(model, x, y, attack=attack, epsilons=[EPS])
    contenders["curve, 5 eps"] = lambda: robust_accuracy(
        model, x, y, attack=attack, epsilons=EPSILONS
    )
    if fastest is not None:
        for eps in EPSILONS:
            contenders[f"{fastest} @ {eps}"] = lambda eps=eps: runners[fastest](eps)
    times = timed_rounds(contenders, args.repeats)

    print(
        f"PGD Linf, eps {EPS}, {STEPS} steps of {STEP_SIZE}, no random start; "
        f"digits CNN, {x.shape[0]} test images; {args.repeats} rounds, ratios paired within "
        f"each round (median shown); torch threads {torch.get_num_threads()}"
    )
    print(f"  {'implementation':<14}{'robust acc':>12}{'time / bare loop':>18}{'median':>10}")
    record: dict[str, object] = {"robust_accuracy": accuracy, "time_over_bare_loop": {}}
    for name in runners:
        ratio = paired_ratio(times, [name], ["bare loop"])
        record["time_over_bare_loop"][name] = ratio  # type: ignore[index]
        shown = "" if name == "bare loop" else f"{accuracy[name]:.1%}"
        print(
            f"  {name:<14}{shown:>12}{ratio:>17.2f}x{1000 * statistics.median(times[name]):>8.0f}ms"
        )
    for name in missing:
        print(f"  {name:<14}{'not installed (see benchmarks/README.md)':>30}")
    if fastest is None:
        if args.json:
            with open(args.json, "w") as file:
                json.dump(record, file, indent=2)
        return

    one = robust_accuracy(model, x, y, attack=attack, epsilons=[EPS])
    one_ratio = paired_ratio(times, ["curve, 1 eps"], [fastest])
    print(
        f"\nrobust_accuracy at eps {EPS} vs the fastest peer ({fastest}): "
        f"time ratio {one_ratio:.2f}x (target <= 0.7x)"
    )
    print(f"  robust acc {float(one.accuracy[0]):.1%} vs {accuracy[fastest]:.1%}")

    five = robust_accuracy(model, x, y, attack=attack, epsilons=EPSILONS)
    peer_runs = [f"{fastest} @ {eps}" for eps in EPSILONS]
    five_ratio = paired_ratio(times, ["curve, 5 eps"], peer_runs)
    peer_accuracy = [robust(model, runners[fastest](eps), y) for eps in EPSILONS]
    print(
        f"robust_accuracy over {len(EPSILONS)} eps vs {fastest} once per eps: "
        f"time ratio {five_ratio:.2f}x (target <= 0.5x)"
    )
    print(f"  {'eps':>6}{'vulnscope':>11}{fastest:>14}")
    for eps, ours_acc, peer_acc in zip(
        EPSILONS, five.accuracy.tolist(), peer_accuracy, strict=True
    ):
        print(f"  {eps:>6g}{ours_acc:>11.1%}{peer_acc:>14.1%}")
    record.update(
        fastest_peer=fastest,
        curve_one_eps={
            "time_ratio": one_ratio,
            "robust_accuracy": float(one.accuracy[0]),
            "peer_robust_accuracy": accuracy[fastest],
        },
        curve_five_eps={
            "time_ratio": five_ratio,
            "robust_accuracy": five.accuracy.tolist(),
            "peer_robust_accuracy": peer_accuracy,
        },
    )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
