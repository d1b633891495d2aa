"""Adversarial training's cost: vulnscope's objectives beside bare loops and a peer's PGD.

Prints, measured side by side in one run (absolute times on a shared machine mean little):

1. PGD adversarial training (Madry et al.; L∞ 0.1, 10 steps of 0.025 from a random
   start, crafted in eval mode) of the digits CNN for ``--epochs`` epochs on the 1,400
   training images, as a ratio to a bare loop that does the same arithmetic written by
   hand (per minibatch: 10 forward+backward passes with respect to the input, then one
   training step). Target: at most 1.10x. Beside it, the same training with
   torchattacks' ``PGD`` crafting the examples, as many users write it (skipped when
   torchattacks is not installed).
2. TRADES (β 6, 10 steps) as a ratio to its bare loop. Target: at most 1.10x.
3. The robust accuracy (PGD-20 at L∞ 0.1 on the 397 test images) of every trained
   network, to show that the contenders trained the same thing.

Every contender runs once per round, in an order that rotates from round to round;
ratios are taken within each round and the median (min-max) over rounds is printed.

    python benchmarks/defences_speed.py [--rounds 3] [--epochs 2] [--threads 1] [--samples 1400]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from timing import timed_rounds
from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.defences import TRADES, pgd_training
from vulnscope.models import DigitsCNN, build_seeded, train_classifier

EPS, STEPS, STEP_SIZE, BATCH, LR = 0.1, 10, 0.025, 64, 2e-3


def _batches(n: int, epoch: int) -> list[Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
    return [order[start : start + BATCH] for start in range(0, n, BATCH)]


def _bare_pgd(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * EPS
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * grad.sign(), x - EPS), x + EPS)
        x_adv = x_adv.clamp(0, 1)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    return x_adv.detach()


def _bare_trades(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        log_p = F.log_softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=generator)
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), log_p, log_target=True, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + STEP_SIZE * grad.sign(), x - EPS), x + EPS)
        x_adv = x_adv.clamp(0, 1)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    logits = model(x)
    adversarial = F.log_softmax(model(x_adv), dim=1)
    kl = F.kl_div(adversarial, F.log_softmax(logits, dim=1), log_target=True, reduction="batchmean")
    return F.cross_entropy(logits, y) + 6.0 * kl


def _bare_loop(
    x: Tensor, y: Tensor, epochs: int, loss_of: Callable[[nn.Module, Tensor, Tensor], Tensor]
) -> nn.Module:
    model = build_seeded(DigitsCNN, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for epoch in range(epochs):
        for batch in _batches(x.shape[0], epoch):
            loss = loss_of(model, x[batch], y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    """Time every contender, print the ratios and the robust accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1400, help="training images used")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_digits("train"), load_digits("test")
    x, y = train.x[: args.samples], train.y[: args.samples]
    generator = torch.Generator().manual_seed(0)
    trained: dict[str, nn.Module] = {}

    def keep(name: str, build: Callable[[], nn.Module]) -> Callable[[], None]:
        def run() -> None:
            trained[name] = build()

        return run

    def bare_pgd_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(model(_bare_pgd(model, xb, yb, generator)), yb)

    def bare_trades_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        return _bare_trades(model, xb, yb, generator)

    def ours(objective: object) -> Callable[[], nn.Module]:
        return lambda: train_classifier(
            build_seeded(DigitsCNN, 0),
            x,
            y,
            epochs=args.epochs,
            lr=LR,
            batch_size=BATCH,
            objective=objective,  # type: ignore[arg-type]
        )

    def bare(loss_of: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> Callable[[], nn.Module]:
        return lambda: _bare_loop(x, y, args.epochs, loss_of)

    builders = {
        "bare PGD training": bare(bare_pgd_loss),
        "vulnscope pgd_training": ours(pgd_training(EPS)),
        "bare TRADES": bare(bare_trades_loss),
        "vulnscope TRADES": ours(TRADES(eps=EPS, beta=6.0)),
    }
    try:
        import torchattacks  # type: ignore[import-untyped]

        def peer_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
            model.eval()
            attack = torchattacks.PGD(model, eps=EPS, alpha=STEP_SIZE, steps=STEPS)
            x_adv = attack(xb, yb)
            model.train()
            return F.cross_entropy(model(x_adv), yb)

        builders["torchattacks PGD training"] = bare(peer_loss)
    except ImportError:
        print("torchattacks is not installed: its row is skipped")
    contenders = {name: keep(name, build) for name, build in builders.items()}
    for loss_of in (bare_pgd_loss, bare_trades_loss):  # warm up the allocator and kernels
        _bare_loop(x[:256], y[:256], 1, loss_of)
    times = timed_rounds(contenders, args.rounds)
    print(
        f"digits CNN, {args.epochs} epochs on {x.shape[0]} images, {args.rounds} rounds, "
        f"{args.threads} thread(s)"
    )
    print(f"{'contender':<28}{'time ratio (median, min-max)':>32}{'robust acc. (PGD-20)':>24}")
    for name in contenders:
        base = "bare TRADES" if "TRADES" in name else "bare PGD training"
        ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
        result = PGD(eps=EPS, steps=20, early_stop=True, seed=0)(trained[name], test.x, test.y)
        robust = 1.0 - result.success_rate
        print(
            f"{name:<28}{statistics.median(ratios):>14.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            f"{robust:>22.1%}"
        )
    print("targets: vulnscope pgd_training and TRADES at most 1.10x their bare loops")


if __name__ == "__main__":
    main()
