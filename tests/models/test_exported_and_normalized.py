"""torch.export programs (.pt2) and the normalisation wrapper."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from vulnscope.cli import main
from vulnscope.errors import InvalidArgumentError, ModelError
from vulnscope.models import DigitsCNN, Normalized, build_seeded, load_model
from vulnscope.models.exported import _weights_only_torch_load


def _export(path, *, dynamic: bool):  # type: ignore[no-untyped-def]
    model = build_seeded(DigitsCNN, 0).eval()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return model


def test_an_exported_program_loads_and_computes_what_the_model_did(tmp_path) -> None:
    path = tmp_path / "model.pt2"
    model = _export(path, dynamic=True)
    loaded = load_model(str(path))
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    out = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                "--model",
                str(path),
                "--limit",
                "12",
                "--attacks",
                "fgsm",
                "--stages",
                "linf",
                "--linf-eps",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "results.json").read_text())["data"]["samples"] == 12


def test_a_fixed_batch_program_is_refused_with_how_to_export_it(tmp_path) -> None:
    path = tmp_path / "fixed.pt2"
    _export(path, dynamic=False)
    with pytest.raises(ModelError, match=r"batches of exactly 2; export it with .*Dim"):
        load_model(str(path))


def test_a_corrupt_program_gets_one_clear_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"PK\x03\x04 not a real archive")
    with pytest.raises(ModelError, match=r"is not a readable torch\.export program"):
        load_model(str(path))
    assert main(["audit", "--model", str(path), "--out", str(tmp_path / "a")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this would run on unpickling",))


def test_the_export_loader_never_falls_back_to_arbitrary_unpickling(tmp_path) -> None:
    path = tmp_path / "payload.pt"
    with open(path, "wb") as file:
        pickle.dump(_Payload(), file, protocol=2)
    original = torch.load
    with _weights_only_torch_load(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)  # what torch.export.load's fallback asks for
    assert torch.load is original


def test_normalized_is_the_model_of_the_normalised_input() -> None:
    inner = nn.Conv2d(3, 2, 1)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = torch.rand(4, 3, 5, 5)
    expected = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(Normalized(inner, mean, std)(x), expected)
    single = Normalized(nn.Identity(), [0.5], [0.5])
    torch.testing.assert_close(single(x), (x - 0.5) / 0.5)


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [([0.5], [0.0], "std"), ([0.5, 0.5], [0.5], "same length"), ([], [], "one value")],
)
def test_normalized_refuses_bad_settings(mean, std, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=match):
        Normalized(nn.Identity(), mean, std)
    with pytest.raises(InvalidArgumentError, match="2 channels but the input has 3"):
        Normalized(nn.Identity(), [0.1, 0.2], [1.0, 1.0])(torch.rand(1, 3, 2, 2))


class _ExpectsNormalised(nn.Module):
    """The digits CNN behind a normalisation it undoes: it wants (x - 0.5) / 0.25."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.cnn(z * 0.25 + 0.5)


def test_cli_mean_and_std_apply_the_normalisation_inside_the_model(
    tmp_path, capsys, digits_cnn
) -> None:  # type: ignore[no-untyped-def]
    from vulnscope.data import load_digits

    path = tmp_path / "normalised.pt"
    torch.jit.script(_ExpectsNormalised(digits_cnn).eval()).save(str(path))
    common = [
        "audit",
        "--model",
        str(path),
        "--limit",
        "40",
        "--attacks",
        "fgsm",
        "--stages",
        "linf",
        "--linf-eps",
        "0.1",
    ]
    assert main([*common, "--mean", "0.5", "--std", "0.25", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    normalised = json.loads((tmp_path / "a" / "results.json").read_text())["clean_accuracy"]
    raw = json.loads((tmp_path / "b" / "results.json").read_text())["clean_accuracy"]
    test = load_digits("test").take(40)
    with torch.no_grad():
        expected = float((digits_cnn(test.x).argmax(1) == test.y).double().mean())
        unwrapped = float((digits_cnn(test.x * 0.25 + 0.5).argmax(1) == test.y).double().mean())
    assert normalised == pytest.approx(expected) and raw == pytest.approx(unwrapped)
    assert normalised != raw
    capsys.readouterr()
    assert main([*common, "--mean", "0.5", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "--mean and --std go together" in err and len(err.strip().splitlines()) == 1
