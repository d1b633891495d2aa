from __future__ import annotations

import json
import os

import pytest

from vulnscope._io import write_json_atomic


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "r.json", {"a": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_nan_is_refused_rather_than_written_as_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "r.json", {"a": float("nan")})
    assert not (tmp_path / "r.json").exists()
