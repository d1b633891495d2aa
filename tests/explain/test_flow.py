"""The RealNVP flow: exact inverse, log-determinant against autograd, likelihood, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vulnscope.data import load_digits
from vulnscope.errors import DataError, InvalidArgumentError, MissingFileError
from vulnscope.explain.flow import AffineCouplingFlow, load_flow, save_flow
from vulnscope.explain.flow_training import FlowRecipe, pretrained_flow, train_flow
from vulnscope.models.cache import cache_dir


def _random_flow(shape: tuple[int, int, int], seed: int = 0) -> AffineCouplingFlow:
    """A flow far from the identity: every parameter drawn at random (float64)."""
    torch.manual_seed(seed)
    flow = AffineCouplingFlow(shape, couplings=4, hidden=16).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return flow.eval()


def test_the_inverse_is_the_inverse() -> None:
    flow = _random_flow((1, 8, 8))
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, _ = flow(x)
    assert (z - x).abs().max() > 0.1  # the flow moves the points
    assert torch.allclose(flow.inverse(z), x, atol=1e-5, rtol=0)
    latent = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)).double()
    assert torch.allclose(flow(flow.inverse(latent))[0], latent, atol=1e-5, rtol=0)


def test_the_log_determinant_is_autograds() -> None:
    flow = _random_flow((1, 3, 3), seed=3)
    x = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        log_det = flow(x)[1]
    for point, value in zip(x, log_det, strict=True):
        jacobian = torch.autograd.functional.jacobian(
            lambda v: flow(v.view(1, 1, 3, 3))[0].flatten(), point.flatten()
        )
        sign, expected = torch.linalg.slogdet(jacobian)
        assert float(sign) == 1.0  # couplings, ActNorm and the logit all preserve orientation
        assert float(value) == pytest.approx(float(expected), abs=1e-9)


def test_a_trained_flow_prefers_digits_to_noise() -> None:
    train, test = load_digits("train").take(400), load_digits("test").take(100)
    flow = train_flow(train, epochs=4, couplings=4, hidden=32, seed=0)
    with torch.no_grad():
        digits = flow.log_prob(test.x)
        noise = flow.log_prob(torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert float(digits.min()) > float(noise.max())


def test_saved_flows_load_back(tmp_path: Path) -> None:
    flow = _random_flow((1, 4, 4)).float()
    x = torch.rand(5, 1, 4, 4)
    loaded = load_flow(save_flow(flow, tmp_path / "flow.safetensors"))
    assert loaded.shape == (1, 4, 4) and loaded.couplings == 4 and loaded.hidden == 16
    assert torch.equal(loaded.log_prob(x), flow.log_prob(x))
    (tmp_path / "bad.safetensors").write_bytes(b"not a flow")
    with pytest.raises(DataError, match="is not a flow written by save_flow"):
        load_flow(tmp_path / "bad.safetensors")
    with pytest.raises(MissingFileError, match="does not exist"):
        load_flow(tmp_path / "missing.safetensors")


def test_the_pretrained_flow_comes_from_the_cache() -> None:
    # A flow written where the recipe's key points is returned as is, without training.
    flow = _random_flow((1, 8, 8), seed=5).float()
    save_flow(flow, cache_dir() / f"{FlowRecipe().key(12345)}.safetensors")
    cached = pretrained_flow(seed=12345)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(cached.log_prob(x), flow.log_prob(x))


def test_bad_inputs() -> None:
    flow = AffineCouplingFlow((1, 8, 8), couplings=2, hidden=4)
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(N, 1, 8, 8\)"):
        flow(torch.rand(2, 1, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"alpha must be in \(0, 0.5\)"):
        AffineCouplingFlow((1, 8, 8), alpha=0.5)
    with pytest.raises(InvalidArgumentError, match=r"data must hold images .* in \[0, 1\]"):
        train_flow(torch.full((4, 1, 8, 8), 2.0), epochs=1)
