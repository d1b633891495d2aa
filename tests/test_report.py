from __future__ import annotations

import base64
import copy
import functools
import html
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vulnscope._plotting import new_figure, save_png
from vulnscope.report import render_report, write_report

HOSTILE = '<script>alert("x & y")</script>'

STAGE_FIGURES = {
    "robustness": ("robust_accuracy",),
    "minimal_perturbations": ("minimal_perturbations",),
    "spectra": ("spectra",),
    "amplification": ("amplification",),
    "dangerous": ("dangerous",),
    "rg": ("rg_layers", "rg_directions"),
}
STAGE_TITLES = {
    "robustness": "Robust accuracy",
    "minimal_perturbations": "Minimal perturbations",
    "spectra": "Curvature spectra",
    "amplification": "Layer amplification",
    "dangerous": "Dangerous perturbations",
    "rg": "Renormalisation-group analysis",
}
ATTACKS = ["apgd-ce", "apgd-t", "fab-t", "square"]
STAGE_NAMES = {"robustness": ["linf", "l2"], "minimal_perturbations": ["minimal"]}
"""The audit stages that write each section (the others write the section of their name)."""


def _curve(epsilons: list[float], accuracy: list[float], norm: str) -> dict[str, Any]:
    evaluations = [
        {
            "norm": norm,
            "eps": eps,
            "robust_accuracy": robust,
            "clean_accuracy": 0.9874,
            "broken_by": {"clean": 5, "apgd-ce": 120 + index, "apgd-t": 3, "fab-t": 0, "square": 1},
            "stages": [
                {"name": a, "attacked": 10, "broken": 1, "forward_evals": 5, "gradient_evals": 5}
                for a in ATTACKS
            ],
            "checks": {"loss_increases": True},
            "warnings": [f"masking suspected at {norm} {eps}"] if index == 1 else [],
        }
        for index, (eps, robust) in enumerate(zip(epsilons, accuracy, strict=True))
        if eps > 0
    ]
    return {
        "epsilons": epsilons,
        "accuracy": accuracy,
        "evaluations": evaluations,
        "attack_seconds": {},
    }


STAGE_RECORDS: dict[str, Any] = {
    "robustness": {
        "linf": _curve([0.0, 0.02, 0.05], [0.9874, 0.61234, 0.0], "linf"),
        "l2": _curve([0.5, 1.0], [0.5, 0.25], "l2"),
    },
    "minimal_perturbations": {
        "norm": "l2",
        "attacks": ["fab", "deepfool"],
        "n": 100,
        "n_clean_correct": 98,
        "n_not_found": 2,
        "median": 0.123456,
        "mean_found": None,
        "quantiles": {"0.1": 0.05, "0.25": 0.08, "0.5": 0.123456, "0.75": 0.9, "0.9": 1.23456},
        "found_by": {"fab": 90, "deepfool": 6},
        "histogram": {"counts": [3, 5], "edges": [0.0, 0.5, 1.0]},
        "input_l2_median": 4.0,
    },
    "spectra": {
        "samples": 16,
        "fisher": {"eigenvalue_median": [12345.6, 0.5, 0.001234], "trace_median": 12350.0},
        "hessian": {
            "eigenvalue_median": [3.0, -1.0],
            "frobenius_median": 4.2,
            "profile_median": [3.0, 1.0],
        },
    },
    "amplification": {
        "blocks": ["conv1", "conv2", "fc"],
        "singular_value_median": [2.0, 3.0, 1.5],
        "cumulative_median": [2.0, 6.0, 9.0],
        "end_to_end_median": 8.76543,
        "growth_fisher_median": [1.9, 2.9, 1.4],
        "growth_random_median": [1.1, 1.2, 1.0],
    },
    "dangerous": {
        "fisher_l2": 1.5,
        "linf_eps": 0.1,
        "rows": [
            {
                "index": 7,
                "label": 0,
                "fisher": 1,
                "fisher_l2": 1.25,
                "adversarial": 2,
                "adversarial_linf": 0.1,
            },
            {
                "index": 9,
                "label": 2,
                "fisher": 2,
                "fisher_l2": None,
                "adversarial": 0,
                "adversarial_linf": 0.05,
            },
        ],
    },
    "rg": {
        "depth": 2,
        "widths": [64, 32, 16],
        "operators": {"count": 4, "labels": ["a", "b", "c", "d"]},
        "summary": {
            "inputs": 20,
            "skipped_certain": 1,
            "accuracy_sampled": 0.9,
            "layers": [
                {
                    "layer": 1,
                    "kind": "hidden",
                    "leading_mean": 1.23456,
                    "leading_stderr_over_inputs": 0.0456,
                    "leading_jackknife_median": 1.2,
                    "singular_mean": 2.5,
                    "relevant_mean": 1.0,
                },
                {
                    "layer": 2,
                    "kind": "hidden",
                    "leading_mean": 0.8,
                    "leading_stderr_over_inputs": 0.01,
                    "leading_jackknife_median": 0.79,
                    "singular_mean": 1.1,
                    "relevant_mean": None,
                },
            ],
            "product_norm_mean": 0.98,
            "product_norm_stderr": 0.02,
            "fisher_top_median": 12.0,
            "mean_field_alignment_median": 0.7,
            "class_change_distance_median": {"fisher": 0.4, "gradient": 0.5, "random": None},
            "class_change_found_fraction": {"fisher": 1.0, "gradient": 0.95, "random": 0.1},
        },
        "relevant_layers": [1],
    },
}


@functools.cache
def tiny_png(index: int) -> bytes:
    """A small PNG drawn by the package's own plotting helpers, different for each index."""
    figure, axes = new_figure(size=(1.0, 1.0))
    axes[0, 0].plot([0, 1], [0, index + 1])
    with tempfile.TemporaryDirectory() as directory:
        return save_png(figure, Path(directory) / "figure.png").read_bytes()


def synthetic_record(directory: Path, stages: Sequence[str] = tuple(STAGE_FIGURES)) -> dict:
    """A schema-3 record with the given stages, and a tiny PNG in ``directory`` per figure."""
    figures = {}
    for stage in stages:
        for key in STAGE_FIGURES[stage]:
            path = Path(directory) / f"{key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tiny_png(len(figures)))
            figures[key] = path.name
    record = {
        "schema_version": 3,
        "vulnscope_version": "0.1.0",
        "created": "2025-01-02T03:04:05+00:00",
        "model": {
            "name": "digits-cnn",
            "parameters": 12345,
            "num_classes": 3,
            "kind": "classifier",
            "metadata": {"method": "pgd", "settings": {"eps": 0.1, "steps": 10}},
        },
        "data": {
            "source": "digits (test)",
            "samples": 397,
            "input_shape": [1, 8, 8],
            "class_names": ["zero", "one", "two"],
        },
        "settings": {
            "seed": 0,
            "stages": [name for stage in stages for name in STAGE_NAMES.get(stage, [stage])],
            "quick": True,
            "device": "cpu",
            "batch_size": 512,
            "attacks": list(ATTACKS),
            "epsilons": {"linf": [0.02, 0.05], "l2": [0.5, 1.0]},
            "geometry_samples": 16,
        },
        "clean_accuracy": 0.9874,
        "verdict": {
            "level": "high",
            "headline": "Small changes flip most predictions.",
            "text": "Robust accuracy falls to 0% at linf 0.05; try adversarial training.",
        },
        "warnings": ["gradient masking suspected"],
        "figures": figures,
        "timing": {"total": 12.3456, "stages": {stage: 1.0 for stage in stages}},
    }
    record.update({stage: copy.deepcopy(STAGE_RECORDS[stage]) for stage in stages})
    return record


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]*)"', page)]


def test_every_figure_is_embedded_as_a_data_uri(tmp_path):
    record = synthetic_record(tmp_path)
    page = render_report(record, tmp_path)
    written = [(tmp_path / name).read_bytes() for name in record["figures"].values()]
    assert len(written) == 7
    assert embedded_images(page) == written  # the order of the sections is the record's
    assert page.count("<img ") == len(written)


def test_the_page_loads_nothing_from_outside(tmp_path):
    page = render_report(synthetic_record(tmp_path), tmp_path)
    assert "http://" not in page and "https://" not in page
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page)
    )
    assert "src=" not in re.sub(r'src="data:image/png;base64,[^"]*"', "", page)
    for forbidden in ("<script", "<link", "@import", "url(", "@font-face", "<iframe", "<object"):
        assert forbidden not in page.lower()
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert f'<meta http-equiv="Content-Security-Policy" content="{csp}">' in page


def test_every_string_from_the_record_is_escaped(tmp_path):
    record = synthetic_record(tmp_path)
    record["model"]["name"] = HOSTILE
    record["model"]["metadata"] = {HOSTILE: {"note": HOSTILE}, "plain": HOSTILE}
    record["data"]["source"] = HOSTILE
    record["data"]["class_names"] = [HOSTILE, "one", "two"]
    record["warnings"] = [HOSTILE]
    record["verdict"] = {"level": HOSTILE, "headline": HOSTILE, "text": HOSTILE}
    record["settings"]["attacks"] = [*ATTACKS, HOSTILE]
    record["robustness"]["linf"]["evaluations"][0]["warnings"] = [HOSTILE]
    record["robustness"]["linf"]["evaluations"][0]["stages"][0]["name"] = HOSTILE
    record["amplification"]["blocks"][0] = HOSTILE
    record["rg"]["summary"]["layers"][0]["kind"] = HOSTILE
    record["figures"]["spectra"] = HOSTILE  # not a file: named in a note
    page = render_report(record, tmp_path)
    assert "<script" not in page.lower()
    assert 'alert("x' not in page and "x & y" not in page
    escaped = html.escape(HOSTILE)
    assert escaped == "&lt;script&gt;alert(&quot;x &amp; y&quot;)&lt;/script&gt;"
    # title, h1, subtitle, class names (label and clean of one row), warnings, verdict (3),
    # metadata plain value, attack header, per-eps warning, block, layer kind, figure note
    assert page.count(escaped) >= 16
    assert f"<title>vulnscope audit: {escaped}</title>" in page
    assert f"<h1>Robustness audit: {escaped}</h1>" in page
    assert 'class="badge unknown"' in page
    nested = html.escape('{"note":"<script>alert(\\"x & y\\")</script>"}')
    assert f"<tr><td>{escaped}</td><td>{nested}</td></tr>" in page


def headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_sections_follow_the_record_and_absent_stages_are_left_out(tmp_path):
    full = synthetic_record(tmp_path / "full")
    assert headings(render_report(full, tmp_path / "full")) == [
        "Key figures",
        *STAGE_TITLES.values(),
        "Model metadata",
        "Warnings",
        "Settings and timing",
    ]
    record = synthetic_record(tmp_path / "some", stages=["robustness", "spectra"])
    record["model"]["metadata"] = None
    page = render_report(record, tmp_path / "some")
    assert headings(page) == [
        "Key figures",
        "Robust accuracy",
        "Curvature spectra",
        "Warnings",
        "Settings and timing",
    ]
    assert "median minimal L2 perturbation" not in page
    assert "relevant RG layers" not in page
    assert len(embedded_images(page)) == 2


def test_a_missing_or_stray_figure_leaves_a_note_not_a_crash(tmp_path):
    record = synthetic_record(tmp_path)
    (tmp_path / record["figures"]["spectra"]).unlink()
    (tmp_path / record["figures"]["amplification"]).write_bytes(b"GIF89a")
    outside = tmp_path.parent / "outside.png"
    outside.write_bytes((tmp_path / record["figures"]["dangerous"]).read_bytes())
    record["figures"]["dangerous"] = "../outside.png"
    page = render_report(record, tmp_path)
    assert "Figure spectra.png was not found." in page
    assert "Figure amplification.png is not a PNG file." in page
    assert "Figure ../outside.png lies outside the report folder." in page
    assert len(embedded_images(page)) == 4


def test_write_report_writes_the_rendered_page_atomically(tmp_path, monkeypatch):
    record = synthetic_record(tmp_path)
    before = set(os.listdir(tmp_path))
    path = write_report(record, tmp_path)
    assert path == tmp_path / "report.html"
    assert path.read_bytes() == render_report(record, tmp_path).encode("utf-8")
    assert set(os.listdir(tmp_path)) == before | {"report.html"}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    record["model"]["name"] = "another"
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(record, tmp_path)
    assert "another" not in path.read_text("utf-8")
    assert set(os.listdir(tmp_path)) == before | {"report.html"}


def row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def test_numbers_are_formatted_as_specified(tmp_path):
    page = render_report(synthetic_record(tmp_path), tmp_path)
    # key figures: accuracies as percentages with one decimal, the rest to 3 digits
    assert row("clean accuracy", "98.7%") in page
    assert row("robust accuracy, L∞ ε = 0.02", "61.2%") in page
    assert row("robust accuracy, L2 ε = 1", "25.0%") in page
    assert "robust accuracy, L∞ ε = 0<" not in page
    assert row("median minimal L2 perturbation", "0.123") in page
    assert row("top Fisher eigenvalue", "1.23e+04") in page
    assert row("end-to-end amplification", "8.77") in page
    assert row("relevant RG layers", "1") in page
    # robust accuracy: eps, accuracy, then the points each attack of the cascade broke
    header = "".join(f"<th>broken by {a}</th>" for a in ATTACKS)
    assert f"<th>ε</th><th>robust accuracy</th>{header}" in page
    assert row("0", "98.7%", "—", "—", "—", "—") in page
    assert row("0.02", "61.2%", "121", "3", "0", "1") in page
    assert row("0.05", "0.0%", "122", "3", "0", "1") in page
    assert "<li>L∞ ε = 0.02: masking suspected at linf 0.02</li>" in page
    # minimal perturbations, spectra, amplification, dangerous, RG
    assert row("0.9", "1.23") in page
    assert "Mean size of those found: —." in page
    assert row("3", "0.00123", "—") in page
    assert row("conv2", "3", "6", "2.9", "1.2") in page
    assert row("7", "zero", "one", "two", "1.25", "0.1") in page
    assert row("1", "hidden", "1.23 ± 0.0456", "1.2", "2.5", "1", "yes") in page
    assert row("2", "hidden", "0.8 ± 0.01", "0.79", "1.1", "—", "no") in page
    assert row("random", "—", "10.0%") in page
    # settings and timing
    assert row("parameters", "12,345") in page
    assert row("input shape", "1 × 8 × 8") in page
    assert row("epsilons", html.escape('{"linf":[0.02,0.05],"l2":[0.5,1.0]}')) in page
    assert row("total time", "12.3 s") in page


def test_class_indices_are_shown_without_class_names(tmp_path):
    record = synthetic_record(tmp_path, stages=["dangerous"])
    record["data"]["class_names"] = None
    page = render_report(record, tmp_path)
    assert row("7", "0", "1", "2", "1.25", "0.1") in page
    assert row("9", "2", "2", "0", "—", "0.05") in page


def test_verdict_badge_and_empty_warnings(tmp_path):
    record = synthetic_record(tmp_path, stages=[])
    record["warnings"] = []
    for level in ("high", "moderate", "low"):
        record["verdict"]["level"] = level
        page = render_report(record, tmp_path)
        assert f'<span class="badge {level}">{level}</span>' in page
        assert "<strong>Small changes flip most predictions.</strong>" in page
    assert "<h2>Warnings</h2>\n<p>none</p>" in page


def test_a_warning_at_several_budgets_is_said_once_with_every_budget(tmp_path):
    record = synthetic_record(tmp_path, stages=["robustness"])
    for curve in record["robustness"].values():
        for evaluation in curve["evaluations"]:
            evaluation["warnings"] = ["the outputs look like probabilities"]
    page = render_report(record, tmp_path)
    assert page.count("the outputs look like probabilities") == 1
    assert (
        "<li>L∞ ε = 0.02; L∞ ε = 0.05; L2 ε = 0.5; L2 ε = 1: the outputs look like "
        "probabilities</li>" in page
    )
