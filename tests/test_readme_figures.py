"""The README's printed default audit matches what the embedded default model gives today.

The full default audit takes minutes; its first rows are cheap and are the ones a change
of the default model's weights moves first: the clean accuracy, and at the smallest
budget of each norm the points APGD-CE (the first attack of the cascade, run on every
correct point) breaks. Any retraining that changes them fails here until the README's
run is refreshed with ``vulnscope audit`` (see the block's introduction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class _FirstRow:
    eps: float
    robust: str  # as printed, e.g. "88.9%"
    broken: dict[str, int]  # attack column -> points broken


@dataclass(frozen=True)
class _PrintedAudit:
    samples: int
    clean: str
    first_rows: dict[str, _FirstRow]


def _printed_default_audit() -> _PrintedAudit:
    """The text block the README shows as the default audit's output, parsed."""
    pattern = r"```text\n(digits-cnn on digits:test:seed0 \(\d+ samples\).*?)```"
    blocks = re.findall(pattern, README, re.DOTALL)
    assert len(blocks) == 1, "the README shows the default audit's output once"
    lines = blocks[0].splitlines()
    head = re.fullmatch(r".*\((\d+) samples\): clean accuracy (\d+\.\d%)", lines[0])
    assert head is not None, lines[0]
    first_rows = {}
    for index, line in enumerate(lines):
        norm = re.fullmatch(r"robust accuracy \((\w+)\) and the points each attack broke:", line)
        if norm is None:
            continue
        columns = lines[index + 1].split()[2:]  # after "eps" and "robust"
        eps, robust, *counts = lines[index + 2].split()
        first_rows[norm.group(1)] = _FirstRow(
            float(eps), robust, dict(zip(columns, map(int, counts), strict=True))
        )
    assert set(first_rows) == {"linf", "l2"}, first_rows
    return _PrintedAudit(int(head.group(1)), head.group(2), first_rows)


def test_the_readme_block_is_the_default_audit_of_the_test_digits():
    printed = _printed_default_audit()
    assert printed.samples == 397
    assert next(iter(printed.first_rows["linf"].broken)) == "APGD-CE"


def test_the_readme_clean_accuracy_is_the_default_model_s(digits_cnn, digits_test):
    from vulnscope.evaluate import accuracy

    assert f"{accuracy(digits_cnn, digits_test.x, digits_test.y):.1%}" == (
        _printed_default_audit().clean
    )


def test_the_readme_first_rows_are_what_apgd_ce_breaks_on_the_default_model(
    digits_cnn, capsys, tmp_path
):
    from vulnscope.cli import main

    printed = _printed_default_audit()
    linf, l2 = printed.first_rows["linf"], printed.first_rows["l2"]
    arguments = [
        "audit",
        "--stages",
        "linf,l2",
        "--attacks",
        "apgd-ce",
        "--workers",
        "1",
        "--linf-eps",
        f"{linf.eps:g}",
        "--l2-eps",
        f"{l2.eps:g}",
        "--out",
        str(tmp_path),
    ]
    assert main(arguments) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"clean accuracy {printed.clean}"), lines[0]
    for norm, row in printed.first_rows.items():
        at = lines.index(f"robust accuracy ({norm}) and the points each attack broke:")
        eps, _, broken = lines[at + 2].split()
        assert float(eps) == row.eps
        assert int(broken) == row.broken["APGD-CE"], (norm, int(broken), row)
        correct = round(float(printed.clean.rstrip("%")) / 100 * printed.samples)
        robust = (correct - sum(row.broken.values())) / printed.samples
        assert f"{robust:.1%}" == row.robust, norm
