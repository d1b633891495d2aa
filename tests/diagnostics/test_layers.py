"""Layer amplification against independent references: SVDs of the weights of linear
networks, autograd Jacobians of each block of a nonlinear one, and explicit matrix products
for the growth of a direction."""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from vulnscope.diagnostics import input_fisher, layer_amplification
from vulnscope.diagnostics.layers import default_blocks
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError

TOL = {"rtol": 1e-9, "atol": 1e-10}


def _orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _aligned_weights(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """W_k = U_k Σ_k V_kᵀ with V_{k+1}[:, 0] = U_k[:, 0], so ||W_L⋯W_1|| = Π ||W_k||."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    right = _orthogonal(sizes[0], generator)
    for fan_in, fan_out in itertools.pairwise(sizes):
        left = _orthogonal(fan_out, generator)
        rank = min(fan_in, fan_out)
        spectrum = torch.sort(
            0.5 + 2.0 * torch.rand(rank, generator=generator, dtype=torch.float64), descending=True
        ).values
        weights.append(left[:, :rank] @ torch.diag(spectrum) @ right[:, :rank].T)
        # the next layer's right singular vectors: U_k's first column, then any orthonormal rest
        rotation = torch.eye(fan_out, dtype=torch.float64)
        rotation[1:, 1:] = _orthogonal(fan_out - 1, generator)
        right = left @ rotation
    return weights


def _linear_network(weights: list[torch.Tensor]) -> nn.Sequential:
    layers = []
    for weight in weights:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(weight)
        layers.append(layer)
    return nn.Sequential(*layers).eval()


def _inputs(n: int, features: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=generator, dtype=torch.float64)


def _tanh_mlp(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)
        )
    return model.double().eval()


def test_aligned_linear_network_attains_the_product_bound():
    weights = _aligned_weights([4, 5, 3, 2])
    model, x = _linear_network(weights), _inputs(3, 4)
    result = layer_amplification(model, x, direction=torch.ones_like(x))

    tops = torch.stack([torch.linalg.svdvals(w)[0] for w in weights])
    product = weights[2] @ weights[1] @ weights[0]
    assert result.names == ["0", "1", "2"]
    assert result.singular_values.shape == (3, 3)
    torch.testing.assert_close(result.singular_values, tops.expand(3, -1), **TOL)
    torch.testing.assert_close(result.cumulative, torch.cumprod(tops, 0).expand(3, -1), **TOL)
    # the construction makes the bound exact: Π σ_k = ||W_3 W_2 W_1||
    assert float(torch.linalg.svdvals(product)[0]) == pytest.approx(float(tops.prod()), rel=1e-12)
    torch.testing.assert_close(result.cumulative[:, -1], result.end_to_end, **TOL)
    torch.testing.assert_close(result.end_to_end, torch.linalg.svdvals(product)[0].expand(3), **TOL)
    assert (result.residuals.abs() < 1e-6).all()


def test_generic_linear_network_singular_values_bound_end_to_end():
    generator = torch.Generator().manual_seed(5)
    weights = [
        torch.randn(7, 5, generator=generator, dtype=torch.float64),
        torch.randn(6, 7, generator=generator, dtype=torch.float64),
        torch.randn(3, 6, generator=generator, dtype=torch.float64),
    ]
    model, x = _linear_network(weights), _inputs(4, 5)
    result = layer_amplification(model, x, direction=torch.ones_like(x))

    tops = torch.stack([torch.linalg.svdvals(w)[0] for w in weights])
    product = weights[2] @ weights[1] @ weights[0]
    torch.testing.assert_close(result.singular_values, tops.expand(4, -1), **TOL)
    torch.testing.assert_close(result.end_to_end, torch.linalg.svdvals(product)[0].expand(4), **TOL)
    # generic layers are not aligned: the bound holds and is strict
    assert (result.cumulative[:, -1] >= result.end_to_end).all()
    assert (result.cumulative[:, -1] > 1.01 * result.end_to_end).all()


def test_growth_of_a_linear_network_is_the_norm_of_the_partial_products():
    generator = torch.Generator().manual_seed(7)
    weights = [
        torch.randn(6, 4, generator=generator, dtype=torch.float64),
        torch.randn(5, 6, generator=generator, dtype=torch.float64),
        torch.randn(3, 5, generator=generator, dtype=torch.float64),
    ]
    model, x = _linear_network(weights), _inputs(5, 4)
    # per-sample directions of different, non-unit lengths
    direction = 3.0 * torch.randn(5, 4, generator=generator, dtype=torch.float64)
    result = layer_amplification(model, x, direction=direction)

    unit = direction / direction.norm(dim=1, keepdim=True)
    expected, image = [], unit.T
    for weight in weights:
        image = weight @ image
        expected.append(image.norm(dim=0))
    torch.testing.assert_close(result.growth["fisher"], torch.stack(expected, 1), **TOL)
    assert result.growth["random"].shape == (5, 3)
    # no direction grows faster than the bound
    assert (result.growth["fisher"] <= result.cumulative * (1 + 1e-9)).all()
    assert (result.growth["random"] <= result.cumulative * (1 + 1e-9)).all()


def test_tanh_mlp_matches_autograd_jacobians_of_each_block():
    model, x = _tanh_mlp(), _inputs(3, 4, seed=2)
    generator = torch.Generator().manual_seed(11)
    direction = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    result = layer_amplification(model, x, direction=direction)
    assert result.names == ["0", "1", "2", "3", "4"]

    unit = direction / direction.norm(dim=1, keepdim=True)
    for n in range(x.shape[0]):
        activation, chain = x[n : n + 1], torch.eye(4, dtype=torch.float64)
        for k, block in enumerate(model):
            jacobian = torch.autograd.functional.jacobian(block, activation)
            jacobian = jacobian.reshape(-1, activation.numel())
            expected = torch.linalg.svdvals(jacobian)[0]
            torch.testing.assert_close(result.singular_values[n, k], expected, **TOL)
            chain = jacobian @ chain
            growth = (chain @ unit[n]).norm()
            torch.testing.assert_close(result.growth["fisher"][n, k], growth, **TOL)
            with torch.no_grad():
                activation = block(activation)
        whole = torch.autograd.functional.jacobian(model, x[n : n + 1]).reshape(-1, 4)
        torch.testing.assert_close(result.end_to_end[n], torch.linalg.svdvals(whole)[0], **TOL)
    assert (result.cumulative[:, -1] >= result.end_to_end * (1 - 1e-9)).all()


def test_modules_selects_named_submodules_in_the_order_they_run():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                body=nn.Sequential(nn.Linear(6, 5), nn.Tanh()),
                head=nn.Linear(5, 3),
            )
        )
    model = model.double().eval()
    x = _inputs(2, 6).reshape(2, 1, 2, 3)
    direction = torch.ones_like(x)
    assert default_blocks(model) == ["flatten", "body", "head"]

    result = layer_amplification(model, x, modules=["head", "body.0"], direction=direction)
    assert result.names == ["body.0", "head"]
    weights = [model.body[0].weight.detach(), model.head.weight.detach()]
    tops = torch.stack([torch.linalg.svdvals(w)[0] for w in weights])
    torch.testing.assert_close(result.singular_values, tops.expand(2, -1), **TOL)

    default = layer_amplification(model, x, direction=direction)
    assert default.names == ["flatten", "body", "head"]
    torch.testing.assert_close(default.singular_values[:, 0], torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["nope", "body.7", ""])
def test_unknown_module_name_is_rejected_by_name(name):
    model = nn.Sequential(OrderedDict(body=nn.Linear(4, 3))).double().eval()
    with pytest.raises(InvalidArgumentError, match=re.escape(repr(name))):
        layer_amplification(model, _inputs(2, 4), modules=[name])


def test_a_block_run_twice_in_one_forward_is_refused():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared).double().eval()
    assert default_blocks(model) == ["0", "1"]  # the shared block is listed once
    with pytest.raises(ModelError, match="more than once"):
        layer_amplification(model, _inputs(2, 4), direction=torch.ones(2, 4, dtype=torch.float64))
    # the hooks are gone after the error
    assert not shared._forward_pre_hooks and not shared._forward_hooks


def test_weight_sharing_inside_a_custom_module_is_refused():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(torch.tanh(self.block(x)))

    model = Twice().double().eval()
    with pytest.raises(ModelError, match="'block'"):
        layer_amplification(model, _inputs(2, 3), modules=["block"])


def test_non_module_model_is_rejected():
    weight = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(InvalidTypeError, match=r"torch\.nn\.Module"):
        layer_amplification(lambda x: x @ weight.T, _inputs(2, 4))


def test_model_without_children_needs_modules():
    with pytest.raises(ModelError, match="modules"):
        layer_amplification(nn.Linear(4, 3).double().eval(), _inputs(2, 4))


def test_direction_of_the_wrong_shape_is_rejected():
    model, x = _tanh_mlp(), _inputs(2, 4)
    with pytest.raises(InvalidArgumentError, match="direction"):
        layer_amplification(model, x, direction=torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="direction"):
        layer_amplification(model, x, direction=torch.ones(3, 4, dtype=torch.float64))


def test_default_direction_is_the_input_fisher_top_eigenvector():
    model, x = _tanh_mlp(seed=4), _inputs(4, 4, seed=8)
    default = layer_amplification(model, x)
    v1 = input_fisher(model, x, k=1).eigenvectors[:, 0]
    explicit = layer_amplification(model, x, direction=v1)
    flipped = layer_amplification(model, x, direction=-2.0 * v1)  # sign and scale do not matter
    torch.testing.assert_close(default.growth["fisher"], explicit.growth["fisher"], **TOL)
    torch.testing.assert_close(default.growth["fisher"], flipped.growth["fisher"], **TOL)
    torch.testing.assert_close(default.singular_values, explicit.singular_values, **TOL)
    # the Fisher direction is the most dangerous at the logits: it grows more than random ones
    assert not torch.allclose(default.growth["fisher"], default.growth["random"])


def test_same_seed_gives_the_same_result():
    model, x = _tanh_mlp(seed=2), _inputs(3, 4, seed=3)
    first = layer_amplification(model, x, seed=9, steps=3)
    second = layer_amplification(model, x, seed=9, steps=3)
    assert first.names == second.names
    for field in ("singular_values", "cumulative", "end_to_end", "residuals"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    for key in ("fisher", "random"):
        assert torch.equal(first.growth[key], second.growth[key]), key
    other = layer_amplification(model, x, seed=10, steps=3)
    assert not torch.equal(first.growth["random"], other.growth["random"])


def test_in_place_blocks_give_the_same_result_as_their_out_of_place_twins():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    in_place = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    in_place = in_place.double().eval()
    in_place.load_state_dict(plain.state_dict())
    x = _inputs(3, 4, seed=4)
    expected = layer_amplification(plain, x)
    result = layer_amplification(in_place, x)
    torch.testing.assert_close(result.singular_values, expected.singular_values, **TOL)
    torch.testing.assert_close(result.growth["fisher"], expected.growth["fisher"], **TOL)
