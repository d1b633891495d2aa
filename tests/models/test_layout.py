from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save
from torch import nn

from vulnscope.models import ChannelsLastConv2d


def _pair(in_channels: int, seed: int = 0) -> tuple[ChannelsLastConv2d, nn.Conv2d]:
    torch.manual_seed(seed)
    plain = nn.Conv2d(in_channels, 6, 3, padding=1)
    ours = ChannelsLastConv2d(in_channels, 6, 3, padding=1)
    ours.load_state_dict(plain.state_dict())
    return ours, plain


@settings(max_examples=25, deadline=None)
@given(in_channels=st.integers(1, 4), batch=st.integers(1, 5), side=st.integers(3, 9))
def test_values_and_gradients_are_conv2d_s(in_channels, batch, side):
    ours, plain = _pair(in_channels)
    x = torch.rand(batch, in_channels, side, side, dtype=torch.float64)
    ours, plain = ours.double(), plain.double()
    leaf_ours, leaf_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_plain = ours(leaf_ours), plain(leaf_plain)
    assert out_ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_ours, out_plain, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out_plain)
    (grad_ours,) = torch.autograd.grad((out_ours * weights).sum(), leaf_ours)
    (grad_plain,) = torch.autograd.grad((out_plain * weights).sum(), leaf_plain)
    torch.testing.assert_close(grad_ours, grad_plain, rtol=1e-12, atol=1e-12)


def test_a_one_channel_input_is_given_channels_last_strides():
    ours, _ = _pair(1)
    x = torch.rand(2, 1, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)  # ambiguous: both layouts
    out = ours(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_unbatched_inputs_and_torch_func_transforms_run_plain():
    ours, plain = _pair(2)
    x = torch.rand(3, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x[0]), plain(x[0]))
        by_vmap = torch.func.vmap(ours)(x[:, None])
        torch.testing.assert_close(by_vmap[:, 0], plain(x), rtol=1e-5, atol=1e-6)
    jacobian = torch.func.jacrev(ours)(x[:1])
    torch.testing.assert_close(jacobian, torch.func.jacrev(plain)(x[:1]), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.(save|load)` is deprecated:DeprecationWarning")
def test_scripted_it_computes_what_it_did_in_eager_mode(tmp_path):
    ours, _ = _pair(1)
    torch.jit.script(ours).save(tmp_path / "conv.pt")
    loaded = torch.jit.load(tmp_path / "conv.pt")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_its_state_saves_with_safetensors_and_exports_without_warnings(tmp_path):
    ours, _ = _pair(1)
    restored = ChannelsLastConv2d(1, 6, 3, padding=1)
    restored.load_state_dict(load(save(ours.state_dict())))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(restored(x), ours(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        program = torch.export.export(ours.eval(), (x,))
        torch.export.save(program, tmp_path / "conv.pt2")
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(tmp_path / "conv.pt2").module()(x), ours(x))
