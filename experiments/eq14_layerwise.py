"""Kenway (2018) eq. 14 layerwise training of a deep RBM: the naive collapse and what works.

Run:  VULNSCOPE_CACHE_DIR=/tmp/vcache python experiments/eq14_layerwise.py [--seeds 0 1]

For each seed: greedy CD pretraining of ``DeepRBM([64, 64, 64, 64], 10)`` on the binarised
digits, then (from the same greedy weights) each eq. 14 variant. Prints

1. diagnostics of the greedy stack: per level ``h_k`` of the generation pass, the mutual
   information ``I(y; h_k)`` (bits, Monte Carlo; log2(10) = 3.32 is the most a label can
   carry) of the targets that eq. 14 asks layer ``k`` to produce, how often the network's
   own classification pass from level ``k`` upward recognises those targets as their
   label, and the mean absolute gap between the class-conditional means of ``h_k`` under
   the classification pass and under the generation pass;
2. the training accuracy after each layer update of the first sweep (where it breaks);
3. the table: test accuracy of the sampled pass (256 chains) greedy / after each variant.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from vulnscope.rbm.layerwise import LayerwiseResult, train_layerwise_kl
from vulnscope.rbm.network import DeepRBM
from vulnscope.rbm.pretrained import binarized_digits
from vulnscope.rbm.training import greedy_pretrain

VARIANTS: dict[str, dict[str, object]] = {
    "naive: conditional, top-down, 1 sweep": {"objective": "conditional", "sweeps": 1},
    "joint ML (eq. 14), top-down, 3 sweeps": {"objective": "joint", "sweeps": 3},
    "joint ML (eq. 14), bottom-up, 2 sweeps": {
        "objective": "joint",
        "order": "bottom_up",
        "sweeps": 2,
    },
}


@torch.no_grad()
def test_accuracy(network: DeepRBM, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the sampled classification pass (256 chains, Rao-Blackwellised top)."""
    probs = network.classify(x, method="sample", chains=256, seed=0)
    return float((probs.argmax(1) == y).double().mean())


def _probe(train_h: torch.Tensor, test_h: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """Logistic-regression probe of the label from codes (C, S, n): (accuracy, bits bound)."""
    labels = torch.arange(num_classes)[:, None].expand(-1, train_h.shape[1]).reshape(-1)
    features = train_h.reshape(-1, train_h.shape[-1])
    linear = torch.nn.Linear(features.shape[1], num_classes)
    optimiser = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(200):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(linear(features), labels).backward()
            optimiser.step()
    with torch.no_grad():
        logits = linear(test_h.reshape(-1, test_h.shape[-1]))
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(1) == labels).double().mean())
    # Barber-Agakov: I(y; h) >= H(y) - E[-log p_probe(y | h)], in bits (uniform y)
    return accuracy, max(0.0, (math.log(num_classes) - loss) / math.log(2))


@torch.no_grad()
def diagnose(
    network: DeepRBM, num_classes: int, seed: int = 0
) -> list[tuple[int, float, float, float]]:
    """Per hidden level k (top first) of the generation pass q̃_k(h_k | y).

    Returns (k, probe accuracy, lower bound on I(y; h_k) in bits, accuracy of the
    network's own classification pass started from the generated h_k).
    """
    gen = torch.Generator().manual_seed(seed)
    rbms = network.rbms
    depth = network.depth
    labels = torch.arange(num_classes)
    rows = []
    fit = network.sample_down(labels, chains=300, generator=gen).states
    held = network.sample_down(labels, chains=300, generator=gen).states
    for level in range(depth - 1, 0, -1):
        probe_accuracy, bits = _probe(fit[depth - level], held[depth - level], num_classes)
        state = held[depth - level]
        for rbm in rbms[level:-1]:
            state = rbm.sample_hidden(state, gen)
        recognised = (rbms[-1].hidden_probs(state).argmax(-1) == labels[:, None]).double()
        rows.append((level, probe_accuracy, bits, float(recognised.mean())))
    return rows


@torch.no_grad()
def code_gap(network: DeepRBM, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> list[float]:
    """Mean |E_up[h_k | class] - E_down[h_k | class]| per hidden level k = 1..N-1."""
    gen = torch.Generator().manual_seed(seed)
    up = network.sample_up(x, chains=8, generator=gen).states
    down = network.sample_down(y, chains=8, generator=gen).states
    depth = network.depth
    gaps = []
    for level in range(1, depth):
        u, d = up[level].mean(1), down[depth - level].mean(1)
        gap = torch.stack(
            [(u[y == c].mean(0) - d[y == c].mean(0)).abs().mean() for c in range(int(y.max()) + 1)]
        ).mean()
        gaps.append(float(gap))
    return gaps


def main() -> None:
    """Greedy stack, diagnostics, then every eq. 14 variant from the same greedy weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=None, help="substrings of names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = binarized_digits("train"), binarized_digits("test")
    names = [n for n in VARIANTS if args.variants is None or any(v in n for v in args.variants)]
    table: dict[str, list[str]] = {"greedy CD (initialisation)": []}
    for seed in args.seeds:
        start = time.time()
        greedy = DeepRBM([64, 64, 64, 64], train.num_classes, seed=seed)
        greedy_pretrain(greedy, train.x, train.y, seed=seed)
        base = test_accuracy(greedy, test.x, test.y)
        table["greedy CD (initialisation)"].append(f"{base:.3f}")
        print(f"\n=== seed {seed}: greedy test accuracy {base:.3f} ({time.time() - start:.0f} s)")
        print("generation-pass targets q̃_k(h_k|y) of the greedy stack:")
        for level, probe, bits, recognised in diagnose(greedy, train.num_classes, seed):
            print(
                f"  h_{level}: linear probe {probe:.2f}, I(y;h) >= {bits:.2f} bits, "
                f"own pass recognises {recognised:.2f}"
            )
        print(
            "  |E_up - E_down| class means per level:",
            [round(g, 3) for g in code_gap(greedy, train.x, train.y, seed)],
        )
        for name in names:
            network = copy.deepcopy(greedy)
            start = time.time()
            result: LayerwiseResult = train_layerwise_kl(
                network,
                train.x,
                train.y,
                seed=seed,
                tolerance=0.0,
                **VARIANTS[name],  # type: ignore[arg-type]
            )
            accuracy = test_accuracy(network, test.x, test.y)
            table.setdefault(name, []).append(f"{accuracy:.3f}")
            print(f"--- {name}: test {accuracy:.3f} ({time.time() - start:.0f} s)")
            print("  train accuracy per sweep:", [round(a, 3) for a in result.train_accuracy])
            print(
                "  first sweep, train accuracy after layer j:",
                [round(a, 3) for a in result.layer_accuracy[0]],
            )
            print(
                "  objective (neg. pseudo-log-lik., nats/pair) initial:",
                [round(v, 1) for v in result.initial_objective],
                "last sweep:",
                [round(v, 1) for v in result.objective[-1]],
            )
            print(
                "  targets after training:",
                [
                    (lvl, round(p, 2), round(b, 2), round(r, 2))
                    for lvl, p, b, r in diagnose(network, train.num_classes, seed)
                ],
            )
    print("\nTest accuracy, sampled classification pass (256 chains), binarised digits")
    header = "| variant | " + " | ".join(f"seed {s}" for s in args.seeds) + " |"
    print(header)
    print("|" + "---|" * (len(args.seeds) + 1))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
