"""Wall time of ``vulnscope audit --quick`` on a 28x28 Fashion-MNIST CNN, as a user runs it.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) comes from the Debian/Ubuntu package
``dataset-fashion-mnist`` (``sudo apt install dataset-fashion-mnist``; nothing is
downloaded). The script trains a small CNN on the 60,000 training images (seeded, on one
intra-op thread, like the embedded digits models: the same weights on any machine), keeps
it in the cache as a TorchScript file keyed by its recipe, prints its clean accuracy on the
10,000 test images, then times

    vulnscope audit --model <file> --data fashion-mnist --quick --limit 1000

in a subprocess, with ``OMP_NUM_THREADS`` unset (``--workers auto``), and prints the
audit's own summary, how many points it evaluated, and each stage's share of the time.

    python benchmarks/fashion_mnist_audit.py [--limit 1000] [--epochs 4] [--seed 0]
        [--out DIR] [--options "--workers 1"]

A first run trains the model (a few minutes on 2 cores); later runs read it back.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from vulnscope.data import load_installed
from vulnscope.errors import MissingFileError
from vulnscope.models import ChannelsLastConv2d, cache_dir, save_torchscript
from vulnscope.models.cache import Recipe, train_recipe
from vulnscope.models.pooling import WindowMaxPool2d

REVISION = 1
"""Raised when the architecture or the training changes, so that a stale file is not reused."""


def fashion_cnn() -> nn.Sequential:
    """A small CNN for (N, 1, 28, 28) inputs, built from the digits CNN's layers.

    Two 3x3 convolutions (16 and 32 channels), each max-pooled 2x2 before its ReLU (they
    commute; the ReLU then runs on a quarter of the values), a 128-unit ReLU layer and ten
    logits: 28x28 -> 14x14 -> 7x7. Plain named layers, so that certify reads the scripted
    file.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=ChannelsLastConv2d(1, 16, 3, padding=1),
            pool1=WindowMaxPool2d(2),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            pool2=WindowMaxPool2d(2),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc=nn.Linear(32 * 7 * 7, 128),
            relu3=nn.ReLU(),
            logits=nn.Linear(128, 10),
        )
    )


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Clean accuracy, in batches of 1000."""
    with torch.no_grad():
        right = sum(
            int((model(x[start : start + 1000]).argmax(1) == y[start : start + 1000]).sum())
            for start in range(0, len(y), 1000)
        )
    return right / len(y)


def trained_model(epochs: int, seed: int) -> tuple[Path, float | None]:
    """The cached TorchScript file of the trained CNN, and the training time if it trained now."""
    recipe = Recipe(
        "cnn28", "fashion-mnist", epochs, batch_size=128, lr=2e-3, weight_decay=0.0,
        revision=REVISION,
    )  # fmt: skip
    path = cache_dir() / "benchmarks" / f"{recipe.key(seed)}.pt"
    if path.is_file():
        return path, None
    train = load_installed("fashion-mnist", "train")
    print(f"training the CNN on {len(train)} images ({epochs} epochs, one thread)", flush=True)
    started = time.perf_counter()
    model = train_recipe(fashion_cnn, recipe, train.x, train.y, seed=seed)
    seconds = time.perf_counter() - started
    save_torchscript(model, path, metadata={"recipe": recipe.key(seed)})  # atomic
    return path, seconds


def main() -> int:
    """Train (or read back) the CNN, then time the quick audit on the test split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="test points (default 1000)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--options", default="", help="more audit options, e.g. '--workers 1'")
    args = parser.parse_args()
    try:
        test = load_installed("fashion-mnist", "test")
    except MissingFileError as error:
        print(f"fashion_mnist_audit.py: {error}", file=sys.stderr)
        return 1
    path, training = trained_model(args.epochs, args.seed)
    if training is not None:
        print(f"trained in {training:.1f} s; cached as {path}")
    model = torch.jit.load(str(path)).eval()
    print(f"clean accuracy on the {len(test)} test images: {accuracy(model, test.x, test.y):.2%}")

    out = args.out or Path(tempfile.mkdtemp(prefix="fashion-audit-"))
    command = [
        sys.executable, "-m", "vulnscope", "audit", "--model", str(path),
        "--data", "fashion-mnist", "--quick", "--limit", str(args.limit),
        "--out", str(out), *shlex.split(args.options),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    print("$ " + shlex.join(["vulnscope", *command[3:]]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(done.stdout, end="")
    if done.returncode != 0:
        print(done.stderr, end="", file=sys.stderr)
        return done.returncode
    record = json.loads((out / "results.json").read_text())
    stages = ", ".join(f"{name} {sec:.0f} s" for name, sec in record["timing"]["stages"].items())
    print(f"audited {record['data']['samples']} of the {args.limit} points asked for")
    print(f"wall time: {wall:.1f} s on {os.cpu_count()} cores ({stages})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
