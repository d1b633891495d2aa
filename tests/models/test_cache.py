from __future__ import annotations

import dataclasses

import pytest
import torch

from vulnscope.errors import VulnscopeWarning
from vulnscope.models import cache as cache_module
from vulnscope.models import cache_dir, pretrained


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VULNSCOPE_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.delenv("VULNSCOPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "vulnscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vulnscope"


def test_second_call_loads_the_cached_weights_without_training(monkeypatch, tmp_path, digits_test):
    monkeypatch.setenv("VULNSCOPE_CACHE_DIR", str(tmp_path))
    first = pretrained("digits-mlp", seed=3)
    files = list(tmp_path.glob("digits-mlp-seed3-*.safetensors"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again despite the cache")

    monkeypatch.setattr(cache_module, "_train", no_training)
    second = pretrained("digits-mlp", seed=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not second.training
    accuracy = (second(digits_test.x).argmax(1) == digits_test.y).float().mean()
    assert accuracy > 0.93


def test_the_key_depends_on_seed_and_recipe():
    _, recipe = cache_module.PRETRAINED["digits-cnn"]
    assert recipe.key(0) != recipe.key(1)
    assert recipe.key(0) != dataclasses.replace(recipe, epochs=recipe.epochs + 1).key(0)


def test_damaged_cache_file_is_replaced_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("VULNSCOPE_CACHE_DIR", str(tmp_path))
    pretrained("digits-mlp", seed=4)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not safetensors at all")
    with pytest.warns(VulnscopeWarning, match="unreadable.*retraining"):
        model = pretrained("digits-mlp", seed=4)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert path.stat().st_size > 1000  # rewritten
    assert not list(tmp_path.glob("*.tmp"))


def test_use_cache_false_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("VULNSCOPE_CACHE_DIR", str(tmp_path))
    pretrained("digits-mlp", seed=5, use_cache=False)
    assert not list(tmp_path.iterdir())
