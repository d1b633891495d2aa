"""The audit's ``beyond-lp`` stage: rotations and translations, random noise, occlusion.

On the geometry sample, the perturbations that leave the Lp ball
(:mod:`vulnscope.perturbations`):

- Engstrom et al.'s (2019) exhaustive grid of rotations and translations, scaled to the
  image (:func:`~vulnscope.perturbations.transforms.default_spatial_grid`: ±30° and ±1 px
  on 8×8, ±3 px on 28×28), with black fill;
- random and semi-random noise against the minimal adversarial L2 norm, beside Fawzi et
  al.'s (2016) predictions √d and √(d/m), for m = d/8, d/4 and d/2 (d/4 alone with
  ``--quick``);
- a grey patch (Zeiler and Fergus 2014; Sharif et al. 2016) of a quarter of the image's
  side slid over it at half its size's stride.

One figure shows them together (:func:`~vulnscope.perturbations.plots.plot_beyond_lp`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from vulnscope.audit.stage import (
    AuditPlan,
    Piece,
    Report,
    ReportSection,
    StageVerdict,
    register_stage,
)
from vulnscope.audit.stages.sample import SampleStage
from vulnscope.perturbations.noise import NoiseRobustness, noise_robustness
from vulnscope.perturbations.occlusion import occlusion_worst_case
from vulnscope.perturbations.plots import plot_beyond_lp, rotation_accuracy
from vulnscope.perturbations.spatial import spatial_worst_case
from vulnscope.perturbations.transforms import default_spatial_grid

__all__ = ["BeyondLp", "BeyondLpStage", "NoiseRatio", "Occlusion", "Spatial"]

_FIGURE = "beyond_lp.png"
_DIRECTIONS = 20
"""Random directions per point (10 with ``--quick``)."""
_OCCLUSION_FILL = 0.5
"""The patch's grey."""


@dataclass(frozen=True)
class Spatial:
    """Accuracy under the grid of rotations and translations.

    Attributes:
        rotations: the grid's angles, degrees.
        translations: its offsets per axis, pixels (every (dx, dy) pair is tried).
        transformations: the grid's size.
        clean_accuracy: on the sample, untransformed.
        worst_case_accuracy: the share classified correctly under every transformation.
        rotation_accuracy: accuracy at each rotation (no translation).

    """

    rotations: list[float]
    translations: list[float]
    transformations: int
    clean_accuracy: float
    worst_case_accuracy: float
    rotation_accuracy: list[float]


@dataclass(frozen=True)
class NoiseRatio:
    """Median noise-to-adversarial ratio of one kind of noise.

    Attributes:
        kind: ``"random"`` or ``"semi-random"``.
        subspace_dim: m (semi-random only).
        median_ratio: the median over correctly classified points (None: no finite ratio).
        predicted: √d or √(d/m).

    """

    kind: str
    subspace_dim: int | None
    median_ratio: float | None
    predicted: float


@dataclass(frozen=True)
class Occlusion:
    """The sliding patch: its size and the accuracy under its worst position."""

    patch: int
    stride: int
    fill: float
    worst_case_accuracy: float


@dataclass(frozen=True)
class BeyondLp:
    """The record's ``beyond_lp`` section.

    Attributes:
        samples: points of the geometry sample measured.
        dimension: d, the input's features.
        adversarial_median: median minimal adversarial L2 norm (DeepFool) of the correctly
            classified points (None: none).
        spatial: the grid search.
        noise: random noise, then semi-random noise per subspace dimension.
        occlusion: the patch.

    """

    samples: int
    dimension: int
    adversarial_median: float | None
    spatial: Spatial
    noise: list[NoiseRatio]
    occlusion: Occlusion


def _finite(value: float) -> float | None:
    return value if torch.isfinite(torch.tensor(value)) else None


def _subspaces(dimension: int, *, quick: bool) -> list[int]:
    """The subspace dimensions: d/8, d/4 and d/2 (d/4 alone with ``--quick``)."""
    return sorted({max(1, dimension // k) for k in ((4,) if quick else (8, 4, 2))})


def _predictions(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1).cpu()


class BeyondLpStage(SampleStage[BeyondLp]):
    """Spatial, noise and occlusion robustness on the geometry sample (module docstring)."""

    name = "beyond-lp"
    description = "rotations and translations, random noise, occlusion"
    section = ("beyond_lp",)
    piece_type = BeyondLp
    result_type = BeyondLp
    figure_files: ClassVar[Mapping[str, str]] = {"beyond_lp": _FIGURE}
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "required": ["samples", "dimension", "adversarial_median", "spatial", "noise", "occlusion"],
        "additionalProperties": False,
        "properties": {
            "samples": {"type": "integer", "minimum": 1},
            "dimension": {"type": "integer", "minimum": 1},
            "adversarial_median": {"$ref": "#/$defs/number_or_null"},
            "spatial": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "rotations",
                    "translations",
                    "transformations",
                    "clean_accuracy",
                    "worst_case_accuracy",
                    "rotation_accuracy",
                ],
                "properties": {
                    "rotations": {"type": "array", "items": {"type": "number"}},
                    "translations": {"type": "array", "items": {"type": "number"}},
                    "transformations": {"type": "integer", "minimum": 1},
                    "clean_accuracy": {"$ref": "#/$defs/fraction"},
                    "worst_case_accuracy": {"$ref": "#/$defs/fraction"},
                    "rotation_accuracy": {"type": "array", "items": {"$ref": "#/$defs/fraction"}},
                },
            },
            "noise": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["kind", "subspace_dim", "median_ratio", "predicted"],
                    "properties": {
                        "kind": {"enum": ["random", "semi-random"]},
                        "subspace_dim": {"type": ["integer", "null"], "minimum": 1},
                        "median_ratio": {"$ref": "#/$defs/number_or_null"},
                        "predicted": {"type": "number", "minimum": 0},
                    },
                },
            },
            "occlusion": {
                "type": "object",
                "additionalProperties": False,
                "required": ["patch", "stride", "fill", "worst_case_accuracy"],
                "properties": {
                    "patch": {"type": "integer", "minimum": 1},
                    "stride": {"type": "integer", "minimum": 1},
                    "fill": {"type": "number"},
                    "worst_case_accuracy": {"$ref": "#/$defs/fraction"},
                },
            },
        },
    }

    @override
    def compute(self, piece: Piece, plan: AuditPlan, tick: Callable[[], None]) -> BeyondLp:
        model = plan.model
        x, y = plan.geometry_inputs()
        grid = default_spatial_grid(x.shape)
        spatial = spatial_worst_case(model, x, y, **grid._asdict())
        random = noise_robustness(
            model,
            x,
            y,
            kind="random",
            directions=_DIRECTIONS // 2 if plan.quick else _DIRECTIONS,
            seed=plan.seed,
        )
        noise = [random] + [
            noise_robustness(
                model,
                x,
                y,
                kind="semi-random",
                subspace_dim=m,
                adversarial_norms=random.adversarial_norms,
                seed=plan.seed,
            )
            for m in _subspaces(random.dimension, quick=plan.quick)
        ]
        side = min(x.shape[-2:])
        patch = max(2, round(side / 4))
        stride = max(1, patch // 2)
        occlusion = occlusion_worst_case(
            model, x, y, patch=patch, stride=stride, fill=_OCCLUSION_FILL
        )
        if plan.directory is not None:
            predictions = {
                "clean": _predictions(model, x),
                "spatial": _predictions(model, spatial.x_worst),
                "occlusion": _predictions(model, occlusion.x_worst),
            }
            plot_beyond_lp(spatial, noise, occlusion, x, predictions, plan.directory / _FIGURE)
        adversarial = random.adversarial_norms[random.correct]
        return BeyondLp(
            samples=int(x.shape[0]),
            dimension=random.dimension,
            adversarial_median=float(adversarial.median()) if adversarial.numel() else None,
            spatial=Spatial(
                rotations=list(grid.rotations),
                translations=list(grid.translations),
                transformations=int(grid.params().shape[0]),
                clean_accuracy=float(spatial.clean_correct.float().mean()),
                worst_case_accuracy=spatial.accuracy,
                rotation_accuracy=rotation_accuracy(spatial)[1],
            ),
            noise=[_ratio(measure) for measure in noise],
            occlusion=Occlusion(
                patch=patch,
                stride=stride,
                fill=_OCCLUSION_FILL,
                worst_case_accuracy=occlusion.accuracy,
            ),
        )

    @override
    def verdict(self, result: BeyondLp, clean_accuracy: float) -> StageVerdict:
        spatial, occlusion = result.spatial, result.occlusion
        sentences = [
            f"Rotations within ±{max(spatial.rotations):g}° and translations within "
            f"±{max(spatial.translations):g} px (worst of {spatial.transformations} on a grid) "
            f"leave {spatial.worst_case_accuracy:.0%} of the sample classified correctly "
            f"({spatial.clean_accuracy:.0%} untransformed); a grey {occlusion.patch}×"
            f"{occlusion.patch} patch at its worst place leaves "
            f"{occlusion.worst_case_accuracy:.0%}."
        ]
        random = result.noise[0]
        if random.median_ratio is not None:
            sentences.append(
                f"Random noise must be {random.median_ratio:.2g} times larger than the "
                f"smallest adversarial perturbation to change the class (median; Fawzi et "
                f"al. predict about √d = {random.predicted:.3g})."
            )
        return StageVerdict(sentences=tuple(sentences))

    @override
    def summary(self, result: BeyondLp) -> list[str]:
        spatial = result.spatial
        random = result.noise[0]
        ratio = "—" if random.median_ratio is None else f"{random.median_ratio:.2f}"
        return [
            f"beyond Lp: spatial grid worst case {spatial.worst_case_accuracy:.1%} "
            f"(clean {spatial.clean_accuracy:.1%}, {spatial.transformations} transformations); "
            f"{result.occlusion.patch}×{result.occlusion.patch} patch "
            f"{result.occlusion.worst_case_accuracy:.1%}; random noise / adversarial L2 "
            f"{ratio} (√d = {random.predicted:.3g})"
        ]

    @override
    def key_figures(self, result: BeyondLp, report: Report) -> list[tuple[str, str]]:
        random = result.noise[0]
        return [
            ("spatial worst-case accuracy", report.percent(result.spatial.worst_case_accuracy)),
            (
                "random noise / adversarial L2 (median)",
                f"{report.number(random.median_ratio)} (√d = {report.number(random.predicted)})",
            ),
        ]

    @override
    def report(self, result: BeyondLp, report: Report) -> ReportSection:
        """The spatial grid, the noise ratios and the patch, with the figure."""
        spatial, occlusion = result.spatial, result.occlusion
        rows = [
            (
                "rotations and translations",
                f"±{max(spatial.rotations):g}°, ±{max(spatial.translations):g} px, "
                f"{spatial.transformations} on a grid",
                report.percent(spatial.worst_case_accuracy),
            ),
            (
                "occluding patch",
                f"{occlusion.patch}×{occlusion.patch}, stride {occlusion.stride}, "
                f"grey {occlusion.fill:g}",
                report.percent(occlusion.worst_case_accuracy),
            ),
        ]
        table = report.table(["perturbation", "set", "worst-case accuracy"], rows)
        noise_rows = [
            (
                noise.kind
                if noise.subspace_dim is None
                else f"semi-random, m = {noise.subspace_dim}",
                report.number(noise.median_ratio),
                report.number(noise.predicted),
            )
            for noise in result.noise
        ]
        noise_table = report.table(
            ["noise", "median noise / adversarial L2", "predicted (√d, √(d/m))"], noise_rows
        )
        intro = (
            f"<p>On {result.samples} points (d = {result.dimension}; median minimal "
            f"adversarial L2 {report.text(report.number(result.adversarial_median))}), "
            f"clean accuracy {report.text(report.percent(spatial.clean_accuracy))}.</p>"
        )
        return ReportSection(
            "Beyond the Lp ball", f"{intro}\n{table}\n{noise_table}", ("beyond_lp",)
        )


def _ratio(measure: NoiseRobustness) -> NoiseRatio:
    return NoiseRatio(
        kind=measure.kind,
        subspace_dim=measure.subspace_dim,
        median_ratio=_finite(measure.median_ratio),
        predicted=measure.predicted,
    )


register_stage(BeyondLpStage())
