"""A user's evaluation script, unchanged whether run by ``python`` or by ``torchrun``.

``tests/test_distributed.py`` runs it as one process and as K ranks and compares what
each rank wrote: ``python tests/sharded_evaluation_job.py OUT``. It trains a small
classifier on the digits (deterministic with one thread), then calls the evaluation
functions with chunks small enough for every rank to get some, and writes, per rank,
the results' tensors (``OUT/rank-R.safetensors``) and the rest (``OUT/rank-R.json``),
with the number of samples this rank's model evaluated.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from vulnscope.attacks import APGD, FAB, PGD, DeepFool, Square
from vulnscope.data import load_digits
from vulnscope.distributed import Sharding, rank_and_world
from vulnscope.evaluate import minimal_perturbations, robust_accuracy, standard_evaluation_curve

SAMPLES, CHUNK = 30, 5


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train = load_digits("train")
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        optimiser.step()
    return model.eval()


def _exchanges_are_exact() -> dict[str, bool]:
    """Per dtype: whether rows gathered from the ranks arrive bit for bit.

    Every rank builds the same reference, keeps its own rows (row % world == rank) and
    fills the others with junk; :meth:`Sharding.gather_rows` must give the reference back,
    byte for byte (negative zeros, NaN and infinities included).
    """
    sharding = Sharding(1, shard=True, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    values = torch.randn(9, 2, 3, generator=generator, dtype=torch.float64)
    values[0, 0, 0], values[1, 0, 0], values[2, 0, 0], values[3] = -0.0, math.nan, -math.inf, 0
    references = {
        str(dtype): values.to(dtype) for dtype in (torch.float64, torch.float32, torch.bfloat16)
    }
    references["bool"] = values > 0
    references["int64"] = (values * 1e6).long()
    owned = torch.arange(9) % sharding.world == sharding.rank
    exact = {}
    for name, reference in references.items():
        junk = torch.where(owned.view(-1, 1, 1), reference, torch.ones_like(reference))
        gathered = sharding.gather_rows(junk, owned)
        exact[name] = gathered.dtype == reference.dtype and torch.equal(
            gathered.contiguous().view(torch.uint8), reference.contiguous().view(torch.uint8)
        )
    return exact


def main(out: Path) -> None:
    """Evaluate, and write this rank's view of every result."""
    torch.set_num_threads(1)
    model = _classifier()
    forwarded = [0]  # samples this rank's model evaluated: less than one process's if shared
    model.register_forward_hook(lambda module, inputs, output: forwarded.append(len(output)))
    test = load_digits("test")
    x, y = test.x[:SAMPLES], test.y[:SAMPLES]
    curve = standard_evaluation_curve(
        model,
        x,
        y,
        norm="l2",
        epsilons=[0.5, 1.0],
        batch_size=CHUNK,
        # APGD-T's nine targets per chunk cost more than the rest of the script together; a
        # configured DLR attack takes its place between the cascade's names and Square.
        attacks=[
            "apgd-ce",
            APGD(norm="l2", loss="dlr", steps=20, seed=1),
            Square(norm="l2", queries=100, seed=3),
        ],
    )
    accuracy = robust_accuracy(
        model,
        x,
        y,
        attack=PGD(norm="linf", steps=5),
        epsilons=[0.0, 0.05, 0.1],
        batch_size=CHUNK,
    )
    minimal = minimal_perturbations(
        model, x, y, attacks=[DeepFool(norm="l2"), FAB(norm="l2", steps=10)], batch_size=CHUNK
    )
    deepfool = minimal_perturbations(model, x, y, batch_size=CHUNK)  # the default attack
    rank, world = rank_and_world()
    tensors = {
        "curve_accuracy": curve.accuracy,
        "robust_success": accuracy.success,
        "robust_accuracy": accuracy.accuracy,
        "minimal_norms": minimal.norms,
        "minimal_x_adv": minimal.x_adv,
        "deepfool_norms": deepfool.norms,
    }
    for position, evaluation in enumerate(curve.evaluations):
        tensors[f"curve_{position}_x_adv"] = evaluation.x_adv
        tensors[f"curve_{position}_robust"] = evaluation.robust
    record = {
        "world": world,
        "curve": curve.to_dict(),
        "broken_by": [list(evaluation.broken_by) for evaluation in curve.evaluations],
        "robust": accuracy.to_dict(),
        "minimal": minimal.to_dict(),
        "found_by": list(minimal.found_by),
        "exact": _exchanges_are_exact(),
        "forwarded": sum(forwarded),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"rank-{rank}.safetensors")
    (out / f"rank-{rank}.json").write_text(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
