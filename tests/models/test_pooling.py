"""WindowMaxPool2d: max pooling's values, gradients and tangents, whichever path it takes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional

from vulnscope.models import pooling
from vulnscope.models.pooling import WindowMaxPool2d, window_maximum


def _with_ties(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """ReLU'd values with whole windows of equal positive values (as a constant background
    gives after a convolution): max pooling's derivatives pick the first of them."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=generator, dtype=torch.float64))
    x[..., :4, :4] = 0.25
    return x


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 11),
    width=st.integers(1, 11),
    size=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    nan=st.booleans(),
)
def test_window_maximum_equals_max_pool2d(height, width, size, seed, nan):
    if size > min(height, width):
        return
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (2, 3, height, width), generator=generator).float()  # many ties
    if nan:
        x[0, 1, 0, 0] = math.nan
    torch.testing.assert_close(
        window_maximum(x, size), functional.max_pool2d(x, size), rtol=0, atol=0, equal_nan=True
    )


def test_unbatched_input_is_pooled():
    x = torch.rand(3, 6, 6)
    assert torch.equal(window_maximum(x, 2), functional.max_pool2d(x, 2))


def test_values_only_path_is_taken_without_gradients(monkeypatch):
    calls = []

    def counting(x, size):
        calls.append(size)
        return window_maximum(x, size)

    monkeypatch.setattr(pooling, "window_maximum", counting)
    pool, x = WindowMaxPool2d(2), _with_ties((2, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(pool(x), functional.max_pool2d(x, 2))
    assert calls == [2]
    pool(x.requires_grad_())
    assert calls == [2]


def test_gradients_are_max_pooling_s():
    x = _with_ties((2, 3, 8, 8))
    weights = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    grads = []
    for pool in (nn.MaxPool2d(2), WindowMaxPool2d(2), lambda v: window_maximum(v, 2)):
        leaf = x.clone().requires_grad_()
        (pool(leaf) * weights).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[1], grads[0])
    assert not torch.equal(grads[2], grads[0])  # the ties do tell the two rules apart


@pytest.mark.parametrize("grad_mode", [True, False])
def test_forward_mode_tangents_are_max_pooling_s(grad_mode):
    x, tangent = _with_ties((2, 3, 8, 8)), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = torch.func.jvp(nn.MaxPool2d(2), (x,), (tangent,))[1]
    with torch.set_grad_enabled(grad_mode):
        by_func = torch.func.jvp(WindowMaxPool2d(2), (x,), (tangent,))[1]
        with forward_ad.dual_level():
            dual = WindowMaxPool2d(2)(forward_ad.make_dual(x, tangent))
            by_dual = forward_ad.unpack_dual(dual).tangent
    assert torch.equal(by_func, expected) and torch.equal(by_dual, expected)
    averaged = torch.func.jvp(lambda v: window_maximum(v, 2), (x,), (tangent,))[1]
    assert not torch.equal(averaged, expected)


def test_jacobians_under_vmap_are_max_pooling_s():
    x = _with_ties((3, 1, 4, 4))
    expected = torch.func.vmap(torch.func.jacrev(nn.MaxPool2d(2)))(x)
    with torch.no_grad():
        assert torch.equal(torch.func.vmap(torch.func.jacrev(WindowMaxPool2d(2)))(x), expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.(save|load)` is deprecated:DeprecationWarning")
def test_torchscript_pools_like_max_pool2d(tmp_path):
    scripted = torch.jit.script(nn.Sequential(WindowMaxPool2d(2)))
    scripted.save(tmp_path / "pool.pt")
    loaded = torch.jit.load(tmp_path / "pool.pt")
    x = _with_ties((2, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(loaded(x), functional.max_pool2d(x, 2))


@settings(max_examples=60, deadline=None)
@given(
    channels=st.integers(2, 5),
    height=st.integers(2, 9),
    width=st.integers(2, 9),
    size=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    nan=st.booleans(),
)
def test_channels_last_gradients_are_max_pooling_s(channels, height, width, size, seed, nan):
    if size > min(height, width):
        return
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (2, channels, height, width), generator=generator).double()  # ties
    if nan:
        x[1, 0, height - 1, 0] = math.nan
    x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(2, channels, height // size, width // size, dtype=torch.float64)
    grads = []
    for pool in (WindowMaxPool2d(size), nn.MaxPool2d(size)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        grads.append(torch.autograd.grad((out * weights).sum(), leaf)[0])
        if isinstance(pool, WindowMaxPool2d):
            assert type(out.grad_fn).__name__ == "_ChannelsLastMaxPoolBackward"
            expected = functional.max_pool2d(x, size)
            torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0, equal_nan=True)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_second_derivatives_go_through_the_scatter():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    pool = WindowMaxPool2d(2)
    assert torch.autograd.gradgradcheck(lambda v: pool(v).pow(2), (x,))
