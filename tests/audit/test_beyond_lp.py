"""The ``beyond-lp`` stage: its record agrees with the perturbations it summarises."""

from __future__ import annotations

from vulnscope.audit import audit
from vulnscope.audit.stages.beyond_lp import _subspaces
from vulnscope.perturbations import default_spatial_grid, occlusion_worst_case, spatial_worst_case


def test_the_stage_records_the_grid_the_noise_and_the_patch(digits_cnn, digits_test, tmp_path):
    data = digits_test.take(24)
    result = audit(
        digits_cnn,
        data,
        model_name="cnn",
        stages=["beyond-lp"],
        quick=True,
        geometry_samples=12,
        out=tmp_path,
    )
    section = result.results["beyond-lp"]
    record = result.to_dict()["beyond_lp"]
    assert record["samples"] == 12 and record["dimension"] == 64

    # the record's grid is the default grid of 8x8 images, and its figures are the search's
    grid = default_spatial_grid((8, 8))
    spatial = section.spatial
    assert spatial.rotations == list(grid.rotations) and spatial.transformations == 81
    assert spatial.rotation_accuracy[grid.rotations.index(0.0)] == spatial.clean_accuracy
    assert spatial.worst_case_accuracy <= min(spatial.rotation_accuracy)

    # Fawzi et al.'s predictions beside the measured ratios: sqrt(d), then sqrt(d/m)
    kinds = [(n.kind, n.subspace_dim) for n in section.noise]
    assert kinds == [("random", None), ("semi-random", 16)]  # --quick: m = d/4 alone
    assert [n.predicted for n in section.noise] == [8.0, 2.0]
    assert _subspaces(64, quick=False) == [8, 16, 32]  # the full audit: d/8, d/4, d/2
    assert all(n.median_ratio is not None and n.median_ratio > 1 for n in section.noise)

    assert (tmp_path / "beyond_lp.png").is_file()
    assert "Beyond the Lp ball" in (tmp_path / "report.html").read_text()
    assert f"leave {spatial.worst_case_accuracy:.0%} of the sample" in result.verdict.text


def test_the_stage_s_accuracies_are_those_of_the_searches_on_its_sample(digits_cnn, digits_test):
    data = digits_test.take(16)
    result = audit(
        digits_cnn, data, model_name="cnn", stages=["beyond-lp"], quick=True, geometry_samples=16
    )
    section = result.results["beyond-lp"]
    x, y = data.x, data.y  # 16 of 16: the sample is every point
    grid = default_spatial_grid(x.shape)
    assert (
        section.spatial.worst_case_accuracy
        == spatial_worst_case(digits_cnn, x, y, **grid._asdict()).accuracy
    )
    occluded = occlusion_worst_case(
        digits_cnn,
        x,
        y,
        patch=section.occlusion.patch,
        stride=section.occlusion.stride,
        fill=section.occlusion.fill,
    )
    assert section.occlusion.worst_case_accuracy == occluded.accuracy
    assert section.samples == 16
