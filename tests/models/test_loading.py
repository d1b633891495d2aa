from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from vulnscope.errors import MissingFileError, ModelError
from vulnscope.models import DigitsMLP, load_model, load_state_dict_file


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's module with a factory, importable as 'usermodels:build'."""
    (tmp_path / "usermodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            from vulnscope.models import DigitsMLP

            def build():
                return DigitsMLP(hidden=32)

            def broken():
                raise ValueError("no GPU here")

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("usermodels", None)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    return DigitsMLP(hidden=32).eval()


def _same(a, b):
    x = torch.rand(4, 1, 8, 8)
    return torch.equal(a(x), b(x))


def test_factory_plus_safetensors(user_package, trained, tmp_path):
    save_file(trained.state_dict(), tmp_path / "w.safetensors")
    model = load_model("usermodels:build", weights=tmp_path / "w.safetensors")
    assert _same(model, trained) and not model.training


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model_state_dict"])
def test_factory_plus_torch_state_dict(user_package, trained, tmp_path, wrapper):
    state = trained.state_dict()
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, tmp_path / "w.pt")
    assert _same(load_model("usermodels:build", weights=tmp_path / "w.pt"), trained)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_file(trained, tmp_path):
    torch.jit.script(trained).save(str(tmp_path / "scripted.pt"))
    assert _same(load_model(str(tmp_path / "scripted.pt")), trained)


def test_pickled_module_is_refused_with_export_advice(trained, tmp_path):
    torch.save(trained, tmp_path / "whole.pt")
    with pytest.raises(
        ModelError, match=r"never unpickles arbitrary objects; export it with torch.jit.script"
    ):
        load_model(str(tmp_path / "whole.pt"))


def test_malicious_pickle_does_not_run(tmp_path, user_package):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="never unpickles"):
        load_model("usermodels:build", weights=tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="never unpickles"):
        load_model(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_state_dict_given_as_model_is_explained(trained, tmp_path):
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match="holds a state dict, not a model; pass the architecture"):
        load_model(str(tmp_path / "w.pt"))
    save_file(trained.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="holds weights only"):
        load_model(str(tmp_path / "w.safetensors"))


def test_weights_that_do_not_fit_are_explained(user_package, tmp_path):
    save_file(DigitsMLP(hidden=16).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match=r"do not fit model 'usermodels:build'.*size mismatch"):
        load_model("usermodels:build", weights=tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("nomodule_xyz:build", ModelError, "cannot import 'nomodule_xyz'"),
        ("usermodels:missing", ModelError, "has no callable 'missing'"),
        ("usermodels:broken", ModelError, r"usermodels:broken\(\) failed: ValueError: no GPU here"),
        ("usermodels:not_a_module", ModelError, "must return a torch.nn.Module, returned int"),
        ("usermodels:", ModelError, "model must be 'package.module:factory'"),
        ("missing.pt", MissingFileError, "model file 'missing.pt' does not exist"),
        ("resnet", MissingFileError, "neither a reference model"),
    ],
)
def test_bad_model_specs_are_explained(user_package, spec, error, message):
    with pytest.raises(error, match=message):
        load_model(spec)


def test_reference_model_with_user_weights(trained, tmp_path):
    reference = DigitsMLP()
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    assert _same(load_model("digits-mlp", weights=tmp_path / "w.safetensors"), reference.eval())


def test_missing_weights_file(user_package, tmp_path):
    with pytest.raises(MissingFileError, match=r"weights file .* does not exist"):
        load_state_dict_file(tmp_path / "none.safetensors")
