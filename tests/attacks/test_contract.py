"""The contract every attack keeps, checked on random small models (one test, all attacks)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import ATTACK_CASES, check_attack_contract, random_inputs, tiny_classifier

CASES = [(name, norm, build) for name, norms, build in ATTACK_CASES for norm in norms]
IDS = [f"{name}-{norm}" for name, norm, _ in CASES]
SHAPE = (1, 2, 3)


@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=IDS)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 4),
    eps=st.one_of(st.just(0.0), st.floats(1e-3, 0.8)),
    bounds=st.sampled_from([(0.0, 1.0), (-1.0, 2.0)]),
    targeted=st.booleans(),
)
def test_attack_keeps_the_contract(name, norm, build, seed, n, eps, bounds, targeted):
    model = tiny_classifier(seed, SHAPE, classes=4)
    model[1].weight.requires_grad_(False)  # a frozen layer, to be left frozen
    model[2].train()  # a module in training mode (harmless: no dropout, no batch norm)
    x = random_inputs(seed, n, SHAPE, bounds)
    y = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed))
    target = (y + 1) % 4 if targeted else None
    check_attack_contract(model, build, x, y, target, norm=norm, eps=eps, bounds=bounds)


@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=IDS)
def test_attack_restores_state_when_the_model_raises(name, norm, build):
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_classifier(0, SHAPE)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:  # the validation pass succeeds, the attack's first pass fails
                raise RuntimeError("boom")
            return self.inner(x)

    model = Exploding().eval()
    grads = [p.requires_grad for p in model.parameters()]
    x = random_inputs(0, 2, SHAPE, (0.0, 1.0))
    with pytest.raises(RuntimeError, match="boom"):
        build(norm=norm, eps=0.1, targeted=False, bounds=(0.0, 1.0))(model, x, torch.tensor([0, 1]))
    assert [p.requires_grad for p in model.parameters()] == grads


@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=IDS)
def test_attack_works_under_no_grad_and_inference_mode(name, norm, build):
    model = tiny_classifier(1, SHAPE)
    x = random_inputs(1, 3, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    attack = build(norm=norm, eps=0.3, targeted=False, bounds=(0.0, 1.0))
    reference = attack(model, x, y)
    with torch.no_grad():
        assert torch.equal(attack(model, x, y).x_adv, reference.x_adv)
    with torch.inference_mode():
        x_inference = x.clone()
        assert torch.equal(attack(model, x_inference, y).x_adv, reference.x_adv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "norm", "build"), CASES, ids=IDS)
def test_attack_runs_on_cuda_like_on_cpu(name, norm, build):
    model = tiny_classifier(2, SHAPE)
    x = random_inputs(2, 4, SHAPE, (0.0, 1.0))
    y = torch.tensor([0, 1, 2, 3])
    attack = build(norm=norm, eps=0.2, targeted=False, bounds=(0.0, 1.0))
    on_gpu = attack(model.cuda(), x.cuda(), y.cuda())
    assert on_gpu.x_adv.device.type == "cuda" and on_gpu.success.device.type == "cuda"
    assert (on_gpu.norms <= 0.2 + 1e-9).all()
