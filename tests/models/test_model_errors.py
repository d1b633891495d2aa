"""A model file the audit cannot use gets one clear line and a non-zero exit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.cli import main


class _WrongInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


class _ThreeClasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


def _scripted(module):  # type: ignore[no-untyped-def]
    def write(path):  # type: ignore[no-untyped-def]
        torch.jit.script(module()).save(str(path))

    return write


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            _scripted(_WrongInput),
            r"cannot process inputs of shape \(1, 8, 8\): RuntimeError: "
            r"mat1 and mat2 shapes cannot be multiplied",
        ),
        (_scripted(_ThreeClasses), "the model has 3 outputs but the data has 10 classes"),
        (
            lambda path: path.write_bytes(b"garbage" * 10),
            r"is not a model file vulnscope reads: not TorchScript \(PytorchStreamReader",
        ),
        (
            lambda path: torch.save(nn.Linear(2, 2), path),
            r"holds pickled Python objects beyond tensors \(torch\.nn\.modules\.linear\.Linear\)",
        ),
    ],
    ids=["wrong-input-shape", "wrong-class-count", "corrupt-file", "pickled-module"],
)
def test_unusable_model_files_get_one_line(write, message, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import re

    path = tmp_path / "model.pt"
    write(path)
    assert (
        main(
            [
                "audit",
                "--model",
                str(path),
                "--attacks",
                "fgsm",
                "--limit",
                "8",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (tmp_path / "out" / "results.json").exists()
