"""MCRG speed: the stability matrix and joint chains through a deep RBM, beside their floors.

Prints, measured side by side in one run (absolute times on a shared machine mean little):

1. ``stability_matrix(coarse, fine)`` on S joint samples of M spin-product operators per
   side (±1 values, float32, from ``OperatorSet`` on the layers h_1 and h_2 of a deep RBM)
   as a ratio to the two covariance products it cannot avoid: centre both matrices, then
   ``coarse_cᵀ coarse_c`` and ``coarse_cᵀ fine_c`` by torch matmul in the same dtype.
   With the default 20 jackknife blocks and with the fewest (2). Target: at most 2×.
2. ``DeepRBM([64, 64, 64, 64], 10).sample_up``: ``--chains`` joint chains for one input,
   and ``--inputs`` inputs sharing as many chains: the median time (target: at most 3 s
   for 100,000 chains) and the ratio to a bare matmul + bernoulli loop written inline.

Every contender runs once per round, in an order that rotates from round to round; ratios
are taken within each round and the median (and min-max) over rounds is printed.

    python benchmarks/rg_speed.py [--rounds 7] [--samples 100000] [--operators 512]
                                  [--chains 100000] [--inputs 100] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from timing import timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.rbm.network import DeepRBM
from vulnscope.rg.mcrg import stability_matrix
from vulnscope.rg.operators import OperatorSet

WIDTHS, CLASSES = [64, 64, 64, 64], 10
STAGES = ["  of which eigvalsh(A)", "  of which 21 Cholesky solves"]
QUICK = {"rounds": 1, "samples": 2000, "operators": 40, "chains": 2000, "inputs": 4}


def round_ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-round ratios ``numerator / denominator`` (the two timed in the same round)."""
    return [n / d for n, d in zip(times[numerator], times[denominator], strict=True)]


def operator_set(weight: Tensor, count: int) -> OperatorSet:
    """``count`` operators on the units that ``weight`` (m, n) reads: singles, then pairs."""
    n = weight.shape[1]
    if count <= n:
        return OperatorSet.from_subsets(n, ((unit,) for unit in range(count)))
    return OperatorSet.singles(n) + OperatorSet.pairs_by_weight(weight, count - n)


def operator_values(net: DeepRBM, samples: int, count: int) -> tuple[Tensor, Tensor]:
    """(S, M) coarse (h_2) and fine (h_1) operator values on S joint samples of the network."""
    x = (torch.rand(samples, WIDTHS[0], generator=torch.Generator().manual_seed(1)) < 0.5).float()
    with torch.no_grad():
        states = net.sample_up(x, chains=1, seed=2).states
    h1, h2 = states[1][:, 0], states[2][:, 0]
    rbms = net.rbms
    fine = operator_set(rbms[1].weight.detach(), count)(h1)
    coarse = operator_set(rbms[2].weight.detach(), count)(h2)
    return coarse.contiguous(), fine.contiguous()


def covariance_products(coarse: Tensor, fine: Tensor) -> tuple[Tensor, Tensor]:
    """The floor of ``stability_matrix``: centre, then the two covariance products."""
    coarse_c = coarse - coarse.mean(0)
    fine_c = fine - fine.mean(0)
    return coarse_c.t() @ coarse_c, coarse_c.t() @ fine_c


def bare_chains(net: DeepRBM, x: Tensor, chains: int) -> Callable[[], tuple[list[Tensor], Tensor]]:
    """Ancestral sampling written inline: one matmul and one bernoulli draw per layer.

    The first layer's field is computed once per input (it is the same in every chain);
    the label layer draws one uniform per chain for its categorical (inverse CDF).
    """
    params = [(rbm.weight.detach(), rbm.hidden_bias.detach()) for rbm in net.rbms]
    generator = torch.Generator().manual_seed(0)

    def run() -> tuple[list[Tensor], Tensor]:
        weight, bias = params[0]
        probs = torch.sigmoid(F.linear(x, weight, bias))[:, None, :].expand(-1, chains, -1)
        state = (torch.rand(probs.shape, generator=generator) < probs).float()
        states = [x[:, None, :].expand(-1, chains, -1), state]
        for weight, bias in params[1:-1]:
            probs = torch.sigmoid(F.linear(state, weight, bias))
            state = (torch.rand(probs.shape, generator=generator) < probs).float()
            states.append(state)
        weight, bias = params[-1]
        probs = torch.softmax(F.linear(state, weight, bias), -1)
        uniform = torch.rand((*probs.shape[:-1], 1), generator=generator)
        index = (probs.cumsum(-1) < uniform).sum(-1, keepdim=True).clamp_max(probs.shape[-1] - 1)
        states.append(torch.zeros_like(probs).scatter_(-1, index, 1.0))
        return states, probs

    return run


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    parser.add_argument("--samples", type=int, default=100_000, help="S for stability_matrix")
    parser.add_argument("--operators", type=int, default=512, help="M on each side")
    parser.add_argument("--chains", type=int, default=100_000, help="chains for one input")
    parser.add_argument("--inputs", type=int, default=100, help="inputs sharing --chains")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)

    net = DeepRBM(WIDTHS, CLASSES, seed=0)
    coarse, fine = operator_values(net, args.samples, args.operators)
    one = (torch.rand(1, WIDTHS[0], generator=torch.Generator().manual_seed(3)) < 0.5).float()
    many = torch.rand(args.inputs, WIDTHS[0], generator=torch.Generator().manual_seed(4)) < 0.5
    many = many.float()
    per_input = max(args.chains // args.inputs, 1)
    shapes = {
        f"{x.shape[0]} x {chains:,}": (x, chains)
        for x, chains in [(one, args.chains), (many, per_input)]
    }

    contenders: dict[str, Callable[[], object]] = {
        "covariance products": lambda: covariance_products(coarse, fine),
        "stability_matrix, 20 blocks": lambda: stability_matrix(coarse, fine),
        "stability_matrix, 2 blocks": lambda: stability_matrix(coarse, fine, blocks=2),
    }
    for key, (x, chains) in shapes.items():
        contenders[f"bare loop, {key}"] = bare_chains(net, x, chains)
        contenders[f"sample_up, {key}"] = lambda x=x, chains=chains: net.sample_up(
            x, chains=chains, seed=0
        )

    # Agreement before timing: the same covariance, the same label distribution.
    reference_a, _ = covariance_products(coarse, fine)
    result = stability_matrix(coarse, fine)
    covariance_error = float(
        (result.coarse_covariance - reference_a.double() / args.samples).abs().max()
    )
    # Two stages of stability_matrix, timed alone: where the time beyond the floor goes.
    systems = torch.cat([result.coarse_covariance[None], result.covariance_replicas])
    right = torch.cat([result.T[None], result.replicas]).contiguous()
    contenders[STAGES[0]] = lambda: torch.linalg.eigvalsh(result.coarse_covariance)
    contenders[STAGES[1]] = lambda: torch.cholesky_solve(right, torch.linalg.cholesky_ex(systems).L)
    label_error = {}
    for key, (x, chains) in shapes.items():
        ours = net.sample_up(x, chains=chains, seed=0).end_probs.detach().mean(1)
        bare = contenders[f"bare loop, {key}"]()[1].mean(1)  # type: ignore[index]
        label_error[key] = float((ours - bare).abs().max())

    timed_rounds(contenders, 1)  # warm-up
    times = timed_rounds(contenders, args.rounds)

    print(
        f"MCRG speed; {args.rounds} rounds, ratios paired within each round (median "
        f"[min-max]); torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"\nstability_matrix: S = {args.samples:,} joint samples, M = {coarse.shape[1]} "
        f"operators per side, float32 (target <= 2x the covariance products)"
    )
    print(f"  {'contender':<30}{'median':>9}{'ratio':>9}{'[min-max]':>15}")
    record: dict[str, object] = {
        "samples": args.samples,
        "operators": coarse.shape[1],
        "rounds": args.rounds,
        "coarse_covariance_max_error": covariance_error,
        "label_probs_max_difference": label_error,
    }
    ratios: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name in [
        "covariance products",
        "stability_matrix, 20 blocks",
        "stability_matrix, 2 blocks",
        *STAGES,
    ]:
        figures = summary(round_ratios(times, name, "covariance products"))
        ratios[name], seconds[name] = figures, statistics.median(times[name])
        shown = f"[{figures['min']:.2f}-{figures['max']:.2f}]"
        print(f"  {name:<30}{seconds[name]:>8.2f}s{figures['median']:>8.2f}x{shown:>15}")
    print(
        f"  ('of which': the condition number of A and the full + 20 leave-one-block-out\n"
        f"  solves, timed alone in float64)\n  max |A - reference A|: {covariance_error:.1e}"
    )

    print(
        f"\nDeepRBM({WIDTHS}, {CLASSES}).sample_up: {args.chains:,} chains for 1 input, and "
        f"{args.inputs} inputs x {per_input:,} chains (target <= 3 s for 100,000 chains)"
    )
    print(f"  {'contender':<30}{'median':>9}{'ratio':>9}{'[min-max]':>15}{'|dq|':>9}")
    for key in shapes:
        for name in [f"bare loop, {key}", f"sample_up, {key}"]:
            figures = summary(round_ratios(times, name, f"bare loop, {key}"))
            ratios[name], seconds[name] = figures, statistics.median(times[name])
            shown = f"[{figures['min']:.2f}-{figures['max']:.2f}]"
            error = f"{label_error[key]:.1e}" if name.startswith("sample_up") else ""
            print(
                f"  {name:<30}{seconds[name]:>8.2f}s{figures['median']:>8.2f}x{shown:>15}{error:>9}"
            )
    print("  |dq|: max difference of the chain-averaged label probabilities, ours vs bare loop")
    record.update(ratio=ratios, median_seconds=seconds, chains=args.chains, inputs=args.inputs)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
