"""The command line takes its names, choices and defaults from the library, not copies."""

from __future__ import annotations

import functools
import inspect

import pytest

from vulnscope import cli
from vulnscope.cloning.presets import DEFAULT_SIZE, QUICK, StudySize, study_size


def _parse(*argv: str):
    return cli._build_parser().parse_args(list(argv))


def _defaults(function):
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _choices(command: str, option: str):
    parser = cli._build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if option in a.option_strings).choices)


def test_audit_defaults_come_from_the_audit():
    from vulnscope.audit import DEFAULT_BATCH_SIZE

    assert _parse("audit").batch_size == DEFAULT_BATCH_SIZE


def test_rg_and_diagnose_defaults_are_those_of_their_jobs():
    from vulnscope.diagnostics.job import run_diagnostics
    from vulnscope.rg import OPERATOR_CHOICES
    from vulnscope.rg.job import run_rg

    rg, expected = vars(_parse("rg")), _defaults(run_rg)
    for name in ("depth", "width", "operators", "samples", "limit", "seed"):
        assert rg[name] == expected[name], name
    assert rg["depths"] == list(expected["depths"])
    assert _choices("rg", "--operators") == OPERATOR_CHOICES
    diagnose, expected = vars(_parse("diagnose")), _defaults(run_diagnostics)
    for name in ("samples", "k", "max_distance", "sections", "seed"):
        assert diagnose[name] == expected[name], name


def test_defend_offers_every_method_of_the_library():
    from vulnscope.defences.digits import DEFENCE_METHODS, defend_digits
    from vulnscope.detect.registry import DETECTORS

    assert _choices("defend", "--method") == (*DEFENCE_METHODS, *DETECTORS)
    args, expected = (
        vars(_parse("defend", "--method", "pgd", "--out", "m.pt")),
        _defaults(defend_digits),
    )
    for name in ("eps", "dropout", "temperature", "beta", "seed"):
        assert args[name] == expected[name], name


def test_clone_choices_come_from_the_cloning_package():
    from vulnscope.cloning.job import QUERY_CHOICES
    from vulnscope.cloning.rbm_clone import CLONE_METHODS

    assert _choices("clone", "--queries") == QUERY_CHOICES
    assert _choices("clone", "--cloner") == CLONE_METHODS


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"quick": False, "seeds": None, "budgets": None, "epochs": None}),
        (["--quick"], {"quick": True, "seeds": None, "budgets": None, "epochs": None}),
        (["--quick", "--seeds", "3"], {"quick": True, "seeds": 3, "budgets": None, "epochs": None}),
    ],
)
def test_clone_quick_is_passed_to_the_job_not_written_into_the_arguments(
    monkeypatch, tmp_path, argv, expected
):
    from vulnscope.cloning import job

    seen = {}

    @functools.wraps(job.run_clone)  # the parser reads the defaults from its signature
    def run_clone(out, **kwargs):
        seen.update(kwargs)
        raise cli.VulnscopeError("stop here")

    monkeypatch.setattr("vulnscope.cloning.job.run_clone", run_clone)
    assert cli.main(["clone", "--out", str(tmp_path), *argv]) == 1
    assert {name: seen[name] for name in expected} == expected


def test_the_study_size_takes_what_is_given_and_the_preset_for_the_rest():
    assert study_size() == DEFAULT_SIZE
    assert study_size(quick=True) == QUICK
    assert study_size(budgets=[0.5], quick=True) == StudySize((0.5,), QUICK.seeds, QUICK.epochs)
    assert study_size(seeds=7, epochs=1) == StudySize(DEFAULT_SIZE.budgets, 7, 1)
