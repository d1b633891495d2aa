"""Diagnostics speed: the top Fisher and Hessian eigenpairs beside their floors, and distances.

Prints, measured side by side in one run (absolute times on a shared machine mean little):

1. ``input_fisher(model, x, k=1)`` (the exact path) on ``--fisher-images`` digits images
   as a ratio to the C batched vector-Jacobian products it needs, written directly: C
   ``torch.autograd.grad`` calls through one retained graph, the faster way on a CPU.
   Target: at most 1.5x. The same products by ``torch.func`` (``vjp`` once, ``vmap`` of
   the pullback over the C one-hot cotangents) are shown beside, and ``logit_jacobian``
   timed alone shows what the C x C algebra adds. Agreement: its top eigenvalue against
   ``eigvalsh(Jᵀ M J)`` built from the bare Jacobian (relative error).
2. ``input_hessian_eigenvalues(model, x, y, k=1, steps=m)`` on ``--hessian-images``
   images as a ratio to m Hessian-vector products by double backward, the graph built
   once (forward, input gradient with ``create_graph=True``) as the contender builds it.
   Target: at most 1.3x. Agreement: its top |eigenvalue| against the explicit float64
   Hessian (``torch.autograd.functional.hessian``) of a few samples.
3. Class-change distances (a figure, not a timing): for the test images the model
   classifies correctly, the L2 distance to a class change along the Fisher v1, the
   normalised cross-entropy gradient at the true label and random unit directions, by
   ``line_search_class_change`` up to 3.0 with no clipping, beside the issue's figures.

Every timed contender runs once per round, in an order that rotates from round to round;
ratios are taken within each round and the median (and min-max) over rounds is printed.

    python benchmarks/diagnostics_speed.py [--rounds 7] [--fisher-images 256]
        [--hessian-images 64] [--steps 20] [--distance-images 397] [--directions 8]
        [--threads 1] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

from timing import timed_rounds  # benchmarks/timing.py, beside this script
from vulnscope.data import load_digits
from vulnscope.diagnostics import (
    input_fisher,
    input_hessian_eigenvalues,
    lanczos,
    line_search_class_change,
    logit_jacobian,
    model_classifier,
)
from vulnscope.models import pretrained

MAX_STEP = 3.0
EXACT_HESSIANS = 8  # samples whose explicit Hessian checks the Lanczos eigenvalue
QUICK = {"rounds": 2, "fisher_images": 64, "hessian_images": 16, "distance_images": 64}
# "When tried as a new user would": median L2 distance to a class change (issue figures).
ISSUE = {"fisher v1": 0.59, "gradient": 0.61, "random": 2.0, "random failed": 2 / 3}

FISHER_BARE, FISHER_VMAP, FISHER_OURS = "C autograd.grad (bare)", "C VJPs by vmap", "input_fisher"
FISHER_STAGES = ["  of which logit_jacobian"]
HESSIAN_BARE, HESSIAN_OURS = "m HVPs (bare)", "input_hessian_eigenvalues"
HESSIAN_STAGES = ["  of which Lanczos alone"]


def round_ratios(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """Per-round ratios ``numerator / denominator`` (the two timed in the same round)."""
    return [n / d for n, d in zip(times[numerator], times[denominator], strict=True)]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def vmap_jacobian(
    model: Callable[[Tensor], Tensor], x: Tensor, classes: int
) -> Callable[[], Tensor]:
    """The C products by ``torch.func``: one ``vjp``, then its pullback vmapped over C one-hots."""
    cotangents = torch.eye(classes)[:, None, :].expand(classes, x.shape[0], classes)

    def run() -> Tensor:
        _, pullback = torch.func.vjp(model, x)
        (rows,) = torch.func.vmap(pullback)(cotangents)
        return rows.movedim(0, 1)

    return run


def loop_jacobian(
    model: Callable[[Tensor], Tensor], x: Tensor, classes: int
) -> Callable[[], Tensor]:
    """The floor of the exact Fisher: C backward passes through one retained graph."""
    cotangents = torch.eye(classes)[:, None, :].expand(classes, x.shape[0], classes)

    def run() -> Tensor:
        inputs = x.clone().requires_grad_(True)
        outputs = model(inputs)
        rows = [
            torch.autograd.grad(outputs, inputs, cotangents[c], retain_graph=c + 1 < classes)[0]
            for c in range(classes)
        ]
        return torch.stack(rows, 1)

    return run


def bare_hvps(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, steps: int
) -> Callable[[], list[Tensor]]:
    """The floor of m Lanczos steps: build the double graph once, then m HVPs."""
    vectors = torch.randn((steps, *x.shape), generator=torch.Generator().manual_seed(5))

    def run() -> list[Tensor]:
        inputs = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(inputs), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, inputs, create_graph=True)
        return [torch.autograd.grad(gradient, inputs, v, retain_graph=True)[0] for v in vectors]

    return run


def fisher_matrix(logits: Tensor, jacobian: Tensor) -> Tensor:
    """``Jᵀ (diag p - p pᵀ) J`` in float64: (N, n, n)."""
    probs = torch.softmax(logits.double(), dim=1)
    metric = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    flat = jacobian.flatten(2).double()
    return flat.transpose(1, 2) @ metric @ flat


def relative_error(ours: Tensor, reference: Tensor) -> float:
    return float(((ours - reference).abs() / reference.abs()).max())


def explicit_hessian_top(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Top |eigenvalue| (signed) of each sample's explicit input Hessian, in float64."""
    model64 = copy.deepcopy(model).double()
    tops = []
    for sample, label in zip(x.double(), y, strict=True):

        def loss(point: Tensor, label: Tensor = label) -> Tensor:
            return F.cross_entropy(model64(point[None]), label[None])

        hessian = torch.autograd.functional.hessian(loss, sample).reshape(sample.numel(), -1)
        values = torch.linalg.eigvalsh(hessian)
        tops.append(values[values.abs().argmax()])
    return torch.stack(tops)


def unit(vectors: Tensor) -> Tensor:
    """Rows of unit L2 norm along the last dimension (zero rows stay zero)."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def median(values: Tensor) -> float:
    """The median of a tensor (mean of the middle two for an even count; ``inf`` counts)."""
    return statistics.median(values.flatten().tolist())


def class_change_distances(
    model: torch.nn.Module, x: Tensor, y: Tensor, directions: int
) -> dict[str, object]:
    """L2 distances to a class change along v1, the loss gradient and random directions."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct], y[correct]
    flat = x.flatten(1)
    v1 = input_fisher(model, x, k=1).eigenvectors[:, 0].flatten(1)  # oriented uphill
    inputs = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(inputs), y, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, inputs)
    gradient = gradient.flatten(1)
    noise = torch.randn(
        (x.shape[0], directions, flat.shape[1]), generator=torch.Generator().manual_seed(6)
    )
    candidates = torch.cat(
        [unit(torch.stack([v1, -v1, gradient, -gradient], 1)), unit(noise)], dim=1
    )
    classify = model_classifier(model, tuple(x.shape[1:]))
    t = line_search_class_change(classify, flat, candidates, max_step=MAX_STEP, bounds=None)
    along = {
        "fisher v1, uphill sign": t[:, 0],
        "fisher v1, nearer sign": t[:, :2].min(1).values,
        "gradient, + sign": t[:, 2],
        "gradient, nearer sign": t[:, 2:4].min(1).values,
    }
    random = t[:, 4:]
    figures: dict[str, object] = {
        "images": int(x.shape[0]),
        "zero_gradients": int((gradient.norm(dim=1) == 0).sum()),
        "max_step": MAX_STEP,
    }
    for name, values in along.items():
        figures[name] = {
            "median": median(values),
            "failed": float(values.isinf().double().mean()),
        }
    per_image = [median(row) for row in random]
    figures["random"] = {
        "directions": directions,
        "median_of_image_medians": statistics.median(per_image),
        "median_where_found": median(random[random.isfinite()])
        if random.isfinite().any()
        else math.inf,
        "failed": float(random.isinf().double().mean()),
        "images_all_failed": float(random.isinf().all(1).double().mean()),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    parser.add_argument("--fisher-images", type=int, default=256, help="N for input_fisher")
    parser.add_argument("--hessian-images", type=int, default=64, help="N for the Hessian")
    parser.add_argument("--steps", type=int, default=20, help="m Lanczos steps (HVPs)")
    parser.add_argument(
        "--distance-images", type=int, default=397, help="first test images for the distances"
    )
    parser.add_argument("--directions", type=int, default=8, help="random directions per image")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="few rounds and images (a smoke test)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    torch.set_num_threads(args.threads)

    model = pretrained("digits-cnn").eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # as the diagnostics run it: input gradients only
    data = load_digits("test")
    x_fisher = data.x[: args.fisher_images]
    x_hessian, y_hessian = data.x[: args.hessian_images], data.y[: args.hessian_images]
    with torch.no_grad():
        classes = model(x_fisher[:1]).shape[1]

    contenders: dict[str, Callable[[], object]] = {
        FISHER_BARE: loop_jacobian(model, x_fisher, classes),
        FISHER_VMAP: vmap_jacobian(model, x_fisher, classes),
        FISHER_OURS: lambda: input_fisher(model, x_fisher, k=1),
        HESSIAN_BARE: bare_hvps(model, x_hessian, y_hessian, args.steps),
        HESSIAN_OURS: lambda: input_hessian_eigenvalues(
            model, x_hessian, y_hessian, k=1, steps=args.steps
        ),
    }

    # Agreement before timing. The Fisher: the top eigenvalue of Jᵀ M J from the bare Jacobian.
    with torch.no_grad():
        logits = model(x_fisher)
    jacobian = vmap_jacobian(model, x_fisher, classes)()
    loop_error = float((loop_jacobian(model, x_fisher, classes)() - jacobian).abs().max())
    fisher_reference = torch.linalg.eigvalsh(fisher_matrix(logits, jacobian))[:, -1]
    fisher = input_fisher(model, x_fisher, k=1)
    fisher_error = relative_error(fisher.eigenvalues[:, 0], fisher_reference)
    # The Hessian: the explicit float64 Hessian of the first few samples, against the timed
    # float32 call and the same call on a float64 copy (Lanczos alone, without float32's
    # cancellation in p - onehot where the model is confident).
    few = min(EXACT_HESSIANS, args.hessian_images)
    hessian_reference = explicit_hessian_top(model, x_hessian[:few], y_hessian[:few])
    hessian = input_hessian_eigenvalues(
        model, x_hessian[:few], y_hessian[:few], k=1, steps=args.steps
    )
    hessian64 = input_hessian_eigenvalues(
        copy.deepcopy(model).double(),
        x_hessian[:few].double(),
        y_hessian[:few],
        k=1,
        steps=args.steps,
    )
    top = hessian.eigenvalues[:, 0]
    hessian_errors = {
        "float32_relative": relative_error(top, hessian_reference),
        "float32_relative_to_largest": float(
            (top - hessian_reference).abs().max() / hessian_reference.abs().max()
        ),
        "float64_relative": relative_error(hessian64.eigenvalues[:, 0], hessian_reference),
        "samples": few,
        "losses": hessian.loss.tolist(),
    }

    # Stages timed alone: where the time beyond each floor goes.
    contenders[FISHER_STAGES[0]] = lambda: logit_jacobian(model, x_fisher)
    # The same m Lanczos steps on the same operator (for this piecewise-linear network the
    # input Hessian is Jᵀ M J), its products by one batched matmul: the bookkeeping.
    with torch.no_grad():
        hessian_logits = model(x_hessian)
    explicit = fisher_matrix(hessian_logits, vmap_jacobian(model, x_hessian, classes)())
    start = torch.randn(
        x_hessian.shape[0], explicit.shape[1], generator=torch.Generator().manual_seed(0)
    ).double()

    def lanczos_alone() -> object:
        return lanczos(lambda v: (explicit @ v[:, :, None])[:, :, 0], start, args.steps)

    contenders[HESSIAN_STAGES[0]] = lanczos_alone

    timed_rounds(contenders, 1)  # warm-up
    times = timed_rounds(contenders, args.rounds)

    print(
        f"Diagnostics speed; {args.rounds} rounds, ratios paired within each round (median "
        f"[min-max]); torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    record: dict[str, object] = {
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "classes": classes,
        "fisher_images": x_fisher.shape[0],
        "hessian_images": x_hessian.shape[0],
        "steps": args.steps,
        "torch": torch.__version__,
        "agreement": {
            "fisher_top_eigenvalue_relative_error": fisher_error,
            "fisher_loop_jacobian_max_difference": loop_error,
            "hessian_top_eigenvalue": hessian_errors,
        },
    }
    ratios: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    targets = {FISHER_OURS: 1.5, HESSIAN_OURS: 1.3}

    def table(rows: list[str], floor: str) -> None:
        print(f"  {'contender':<30}{'median':>9}{'ratio':>9}{'[min-max]':>15}{'target':>9}")
        for name in rows:
            figures = summary(round_ratios(times, name, floor))
            median_seconds = statistics.median(times[name])
            ratios[name.strip()], seconds[name.strip()] = figures, median_seconds
            shown = f"[{figures['min']:.2f}-{figures['max']:.2f}]"
            target = f"<= {targets[name]}x" if name in targets else ""
            print(
                f"  {name:<30}{median_seconds:>8.3f}s{figures['median']:>8.2f}x{shown:>15}"
                f"{target:>9}"
            )

    print(
        f"\nTop Fisher eigenpair (exact path, k=1): N = {x_fisher.shape[0]} digits images, "
        f"C = {classes}, ratio to the C batched VJPs"
    )
    table([FISHER_BARE, FISHER_VMAP, FISHER_OURS, *FISHER_STAGES], FISHER_BARE)
    print(
        f"  (the floor: C backward passes through one retained graph, the faster of the two\n"
        f"  ways on a CPU; logit_jacobian alone shows what the C x C algebra adds)\n"
        f"  top eigenvalue vs eigvalsh(Jᵀ M J) of the bare Jacobian: max relative error "
        f"{fisher_error:.1e}; |J_loop - J_vmap| max {loop_error:.1e}"
    )
    print(
        f"\nTop Hessian eigenvalue by m = {args.steps} Lanczos steps: N = {x_hessian.shape[0]}, "
        f"ratio to the double graph + m HVPs"
    )
    table([HESSIAN_BARE, HESSIAN_OURS, *HESSIAN_STAGES], HESSIAN_BARE)
    print(
        f"  (of which: the same m Lanczos steps on the explicit Jᵀ M J, products by bmm)\n"
        f"  top |eigenvalue| vs the explicit float64 Hessian of {few} samples, max relative "
        f"error:\n  {hessian_errors['float32_relative']:.1e} in float32 (the timed call; "
        f"{hessian_errors['float32_relative_to_largest']:.1e} of the largest |eigenvalue|), "
        f"{hessian_errors['float64_relative']:.1e} on a float64 copy of the model"
    )

    images = data.x[: args.distance_images]
    distances = class_change_distances(
        model, images, data.y[: args.distance_images], args.directions
    )
    random = distances["random"]
    assert isinstance(random, dict)
    print(
        f"\nL2 distance to a class change, no clipping, searched up to {MAX_STEP} "
        f"({distances['images']} correctly classified of the first {images.shape[0]} test images)"
    )
    print(f"  {'direction':<34}{'median':>9}{'failed':>9}{'issue':>9}{'failed':>9}")
    rows: list[tuple[str, float, float, str, str]] = []
    for name in [
        "fisher v1, uphill sign",
        "fisher v1, nearer sign",
        "gradient, + sign",
        "gradient, nearer sign",
    ]:
        figures = distances[name]
        assert isinstance(figures, dict)
        issue = {"fisher v1, nearer sign": "fisher v1", "gradient, + sign": "gradient"}.get(name)
        shown = f"{ISSUE[issue]:.2f}" if issue else ""
        rows.append((name, figures["median"], figures["failed"], shown, ""))
    rows += [
        (
            f"random x{args.directions}, image medians",
            random["median_of_image_medians"],
            random["failed"],
            "",
            "",
        ),
        (
            f"random x{args.directions}, where found",
            random["median_where_found"],
            random["failed"],
            f"{ISSUE['random']:.2f}",
            f"{ISSUE['random failed']:.0%}",
        ),
    ]
    for name, value, failed, issue_median, issue_failed in rows:
        print(f"  {name:<34}{value:>9.2f}{failed:>9.0%}{issue_median:>9}{issue_failed:>9}")
    print(
        f"  failed: no class change within {MAX_STEP} (every (image, direction) pair for random);\n"
        f"  random: the median over images of each image's median, and over the pairs that "
        f"changed class;\n  every random direction failed for {random['images_all_failed']:.0%} "
        f"of images; the float32 loss gradient is exactly 0 for {distances['zero_gradients']} "
        f"(counted as failed)"
    )
    record.update(ratio=ratios, median_seconds=seconds, distances=distances, issue=ISSUE)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(record, file, indent=2)


if __name__ == "__main__":
    main()
