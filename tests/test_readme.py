"""Everything the README shows works as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = [block.strip() for block in _blocks("bash")]
    assert len(commands) == 2
    install_and_audit, install_and_test = commands
    assert install_and_audit.endswith("vulnscope audit") and '".[test]"' not in install_and_audit
    assert install_and_test.endswith("python -m pytest -n auto") and '".[test]"' in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines


_TOUR = _blocks("python")


@pytest.mark.parametrize("index", range(len(_TOUR)))
def test_each_block_of_the_python_tour_runs_on_its_own(
    index, digits_cnn, capsys, monkeypatch, tmp_path
):
    from vulnscope.audit import registered_stages, unregister_stage

    monkeypatch.chdir(tmp_path)  # the tour writes an audit directory
    before = set(registered_stages())
    try:
        exec(compile(_TOUR[index], f"README.md, python block {index}", "exec"), {})
        added = set(registered_stages()) - before
    finally:  # a stage the tour registers stays out of the other tests
        for name in set(registered_stages()) - before:
            unregister_stage(name)
    out = capsys.readouterr().out
    if "PGD broke" in _TOUR[index]:
        assert "PGD broke" in out
    if 'out="audit-tour"' in _TOUR[index]:
        assert (tmp_path / "audit-tour" / "report.html").is_file()
    if "register_stage(" in _TOUR[index]:
        assert added == {"correct"} and "Correct(samples=40, correct=" in out


def test_the_tour_checks_what_its_blocks_show():
    assert sum("PGD broke" in block for block in _TOUR) == 1
    assert sum('out="audit-tour"' in block for block in _TOUR) == 1
    assert sum("register_stage(" in block for block in _TOUR) == 1


def test_benchmarks_readme_install_command_uses_the_bench_extra():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert 'pip install torch==2.13.0 -e ".[bench]"' in text and "--no-deps torchattacks" in text
