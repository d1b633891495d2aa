"""Everything the README shows works as written."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_python_tour_runs(digits_cnn, capsys, monkeypatch, tmp_path):
    from vulnscope.audit import registered_stages, unregister_stage

    monkeypatch.chdir(tmp_path)  # the tour writes an audit directory
    namespace: dict[str, object] = {}
    before = set(registered_stages())
    try:
        for block in _blocks("python"):
            exec(compile(block, "README.md", "exec"), namespace)
        assert "correct" not in before and "correct" in registered_stages()
    finally:  # the stage the tour registers stays out of the other tests
        for name in set(registered_stages()) - before:
            unregister_stage(name)
    out = capsys.readouterr().out
    assert "PGD broke" in out and "Correct(samples=40, correct=" in out
    assert (tmp_path / "audit-tour" / "report.html").is_file()


def test_benchmarks_readme_install_command_uses_the_bench_extra():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert 'pip install torch==2.13.0 -e ".[bench]"' in text and "--no-deps torchattacks" in text
