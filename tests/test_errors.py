"""The library's exceptions: one hierarchy, each also the builtin it stands for."""

from __future__ import annotations

import functools
import importlib
import inspect

import pytest

from vulnscope import errors
from vulnscope.cli import main
from vulnscope.errors import CheckpointError, PeerLostError, VulnscopeError, WorkerFailedError

MOVED = [
    (CheckpointError, ValueError, "vulnscope._checkpoint"),
    (WorkerFailedError, ChildProcessError, "vulnscope.launch"),
    (PeerLostError, ConnectionError, "vulnscope.distributed"),
]


@pytest.mark.parametrize(("error", "builtin", "old_home"), MOVED)
def test_moved_errors_are_vulnscope_errors_and_their_builtin(error, builtin, old_home):
    raised = error("worker 1 of 2 exited with status 1: ValueError: boom")
    assert isinstance(raised, VulnscopeError)
    assert isinstance(raised, builtin)
    assert str(raised) == "worker 1 of 2 exited with status 1: ValueError: boom"
    # importable where it used to live, as the same class
    module = importlib.import_module(old_home)
    assert getattr(module, error.__name__) is error
    assert error.__name__ in module.__all__


def test_every_library_error_also_subclasses_a_builtin_more_specific_than_exception():
    generic = {object, BaseException, Exception}
    for name in errors.__all__:
        value = getattr(errors, name)
        if not (inspect.isclass(value) and issubclass(value, VulnscopeError)):
            continue
        if value is VulnscopeError:
            continue
        builtins = [c for c in value.__mro__ if c.__module__ == "builtins" and c not in generic]
        assert builtins, f"{name} subclasses no builtin error"


@pytest.mark.parametrize(("error", "builtin", "old_home"), MOVED)
def test_the_cli_prints_them_in_one_line(error, builtin, old_home, monkeypatch, tmp_path, capsys):
    from vulnscope.defences import digits

    @functools.wraps(digits.defend_digits)  # the parser reads the defaults from its signature
    def fail(*args, **kwargs):
        raise error("the cause, in one line")

    monkeypatch.setattr(digits, "defend_digits", fail)
    status = main(["defend", "--method", "pgd", "--out", str(tmp_path / "model.pt")])
    assert status == 1
    assert capsys.readouterr().err == "vulnscope: error: the cause, in one line\n"
