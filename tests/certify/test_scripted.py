"""TorchScript models (what ``vulnscope defend`` writes) are certified like their eager twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.certify import certify
from vulnscope.errors import ModelError
from vulnscope.models.digits import DigitsCNN, DigitsMLP


@pytest.mark.parametrize("factory", [DigitsCNN, DigitsMLP])
def test_a_scripted_model_gets_its_eager_twin_s_certificate(factory):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.rand(6, 1, 8, 8)
    y = model(x).argmax(1)
    eager = certify(model, x, y, eps=0.02, method="crown").margins
    scripted = certify(torch.jit.script(model), x, y, eps=0.02, method="crown").margins
    assert torch.equal(eager, scripted)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.inner = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        return self.head(torch.relu(self.inner(x)) + x)


def test_a_scripted_forward_that_is_not_its_children_in_order_is_refused():
    torch.manual_seed(0)
    model = torch.jit.script(_Residual().eval())
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ModelError, match="does not reproduce its output"):
        certify(model, x, model(x).argmax(1), eps=0.01)


class _Reformed(nn.Module):
    """A classifier behind a filter, registered first (as the SDAE reformer): no chain."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.filter = nn.Sequential(nn.Flatten(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.filter(x))


def test_a_scripted_forward_whose_children_do_not_chain_gets_a_model_error():
    torch.manual_seed(0)
    model = torch.jit.script(_Reformed().eval())
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ModelError, match=r"submodules, run in the order .* do not chain"):
        certify(model, x, model(x).argmax(1), eps=0.01)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch deprecates TorchScript
def test_a_loaded_script_file_is_read_like_the_module_it_was_saved_from(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.rand(4, 1, 8, 8)
    y = model(x).argmax(1)
    expected = certify(model, x, y, eps=0.02, method="ibp").margins
    assert torch.equal(certify(loaded, x, y, eps=0.02, method="ibp").margins, expected)
