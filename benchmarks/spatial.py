"""The spatial grid attack beside Foolbox's SpatialAttack; the digits models' spatial robustness.

Prints, in one run, one torch thread, CPU seconds of the process (``--clock wall`` for the
wall clock):

1. ``speed``: ``worst_over_transformations`` (the sampling points of the grid built once,
   every transformation of a batch in one ``grid_sample`` call) and Foolbox 3's
   ``SpatialAttack`` (one transformation of the batch at a time) on the digits CNN, the
   same points and the same grid: Foolbox's ``max_rotation`` and ``num_rotations``, its
   translations expressed in our pixels (Foolbox's pixel is ``(n - 1) / n`` of one, see
   ``tests/perturbations/test_spatial_peers.py``), given to ``worst_over_transformations``
   in our convention, so that the robust points agree one for one (checked). Target: at
   most 0.3x Foolbox's time, the median over ``--repeats`` rotating rounds of the ratio
   paired within the round. The grid is kept harmless enough that Foolbox does not stop
   early (it stops once every point is misclassified). Timed in both modes:
   ``grid_accuracy=True`` classifies every transformation of every point (for the
   per-transformation accuracy; Foolbox does the same amount of model work, so the bare
   forward passes over those images, ``forward``, bound it from below), and
   ``grid_accuracy=False`` (a point leaves the search once fooled, the transformations
   farthest from the identity tried first; robust points still see every one). The
   images each classifies are counted once, outside the timing.
2. ``models``: the digits CNN and its PGD-trained version (``defend_digits("pgd")``, L∞
   0.1): clean accuracy, worst-case accuracy on the default 8×8 grid (±30° in 9 steps,
   ±1 px in 3 per axis: 81 transformations), worst-of-10 (Engstrom et al.'s random
   search) and the first-order attack (20 steps, 1 restart) on the same ranges.

Run: ``python benchmarks/spatial.py`` (``--points``, ``--repeats``, ``--clock``).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from timing import paired_ratio, timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.data import load_digits
from vulnscope.defences.digits import defend_digits
from vulnscope.models import pretrained
from vulnscope.perturbations.spatial import (
    IMAGES_PER_CALL,
    spatial_first_order,
    spatial_worst_case,
    worst_of_k,
    worst_over_transformations,
)
from vulnscope.perturbations.transforms import affine_transform, default_spatial_grid

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
TARGET = 0.3


def foolbox_grid(max_rotation: float, rotations: int, max_shift: float, shifts: int, n: int):
    """Foolbox's grid (its rotation, x-shift, y-shift order) as our (G, 4) rows."""
    rows = []
    for phi in np.linspace(-max_rotation, max_rotation, rotations):
        c, s = math.cos(math.radians(phi)), math.sin(math.radians(phi))
        for tx in np.linspace(-max_shift, max_shift, shifts):
            for ty in np.linspace(-max_shift, max_shift, shifts):
                a, b = tx * (n - 1) / n, ty * (n - 1) / n
                rows.append([phi, -(c * a + s * b), -(-s * a + c * b), 1.0])
    return torch.tensor(rows)


def speed(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> None:
    import foolbox

    n = x.shape[-1]
    max_rotation, rotations, max_shift, shifts = 10.0, 9, 0.5 * n / (n - 1), 3
    attack = foolbox.attacks.SpatialAttack(
        max_translation=max_shift,
        max_rotation=max_rotation,
        num_translations=shifts,
        num_rotations=rotations,
    )
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0))
    criterion = foolbox.criteria.Misclassification(y)
    grid = foolbox_grid(max_rotation, rotations, max_shift, shifts, n)
    with torch.no_grad():
        images = affine_transform(x, grid.expand(len(x), *grid.shape)).flatten(0, 1)
    outputs: dict[str, torch.Tensor] = {}

    def every() -> None:
        outputs["every"] = worst_over_transformations(model, x, y, grid).robust

    def early() -> None:
        robust = worst_over_transformations(model, x, y, grid, grid_accuracy=False).robust
        outputs["early"] = robust

    def forward() -> None:
        with torch.no_grad():
            for batch in images.split(IMAGES_PER_CALL):
                model(batch)

    def theirs() -> None:
        outputs["foolbox"] = ~attack(fmodel, x, criterion)[2]

    contenders = {"every": every, "early": early, "forward": forward, "foolbox": theirs}
    for run in contenders.values():  # warm up
        run()
    counts = {name: classified(model, x, y, grid, name == "every") for name in ("every", "early")}
    times = timed_rounds(contenders, args.repeats, clock=CLOCKS[args.clock])
    agree = all(torch.equal(outputs[k], outputs["foolbox"]) for k in ("every", "early"))
    print(
        f"speed: digits CNN, {x.shape[0]} points, {len(grid)} transformations "
        f"(±{max_rotation:g}° in {rotations}, ±0.5 px in {shifts} per axis), "
        f"{args.clock} seconds, one thread"
    )
    print(f"  {'contender':<32} {'images':>7} {'median s':>9} {'x foolbox':>9} {'robust':>7}")
    rows = {
        "every": "vulnscope grid_accuracy=True",
        "early": "vulnscope grid_accuracy=False",
        "forward": "forward passes only",
        "foolbox": "foolbox SpatialAttack",
    }
    for name, label in rows.items():
        count = counts.get(name, len(images))
        ratio = paired_ratio(times, name, "foolbox")
        acc = f"{float(outputs[name].float().mean()):7.3f}" if name in outputs else f"{'':>7}"
        print(f"  {label:<32} {count:7d} {np.median(times[name]):9.3f} {ratio:9.3f} {acc}")
    for name in ("every", "early"):
        ratio = paired_ratio(times, name, "foolbox")
        verdict = "met" if ratio <= TARGET else "MISSED"
        print(f"  target <= {TARGET}x foolbox, {rows[name]}: {verdict}")
    print(f"  same robust points as foolbox: {agree}")


def classified(model: torch.nn.Module, x, y, grid, every: bool) -> int:
    """Transformed images the search classifies (its clean pass left out)."""
    sizes: list[int] = []
    hook = model.register_forward_hook(lambda _m, inputs, _o: sizes.append(len(inputs[0])))
    try:
        worst_over_transformations(model, x, y, grid, grid_accuracy=every)
    finally:
        hook.remove()
    return sum(sizes) - len(x)


def models(x: torch.Tensor, y: torch.Tensor) -> None:
    grid = default_spatial_grid(x.shape)
    limit = grid.translations[-1]
    print(
        f"models: {x.shape[0]} points; default grid {len(grid.params())} transformations "
        f"(±30° in {len(grid.rotations)}, ±{limit:g} px in {len(grid.translations)} per axis)"
    )
    print(f"  {'model':<10} {'clean':>6} {'grid':>6} {'wo-10':>6} {'1st-ord':>7}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = {"cnn": pretrained("digits-cnn"), "cnn-pgd": defend_digits("pgd").model}
    for name, model in candidates.items():
        result = spatial_worst_case(model, x, y, **grid._asdict())
        random = worst_of_k(model, x, y, k=10, rotation=30.0, translation=limit, seed=0)
        first = spatial_first_order(
            model, x, y, rotation=30.0, translation=limit, steps=20, restarts=1, seed=0
        )
        clean = float(result.clean_correct.float().mean())
        print(
            f"  {name:<10} {clean:6.3f} {result.accuracy:6.3f} {random.accuracy:6.3f} "
            f"{first.accuracy:7.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument(
        "--sections", nargs="+", choices=("speed", "models"), default=["speed", "models"]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits("test")
    x, y = data.x[: args.points], data.y[: args.points]
    if "speed" in args.sections:
        speed(pretrained("digits-cnn"), x, y, args)
    if "models" in args.sections:
        models(data.x, data.y)


if __name__ == "__main__":
    main()
