"""The Monte Carlo RG stability matrix against exact Jacobians and lattices with a known T."""

from __future__ import annotations

import math

import pytest
import torch

from vulnscope.errors import InvalidArgumentError, InvalidTypeError, SingularMatrixError
from vulnscope.rbm import RBM, binary_states
from vulnscope.rbm.rbm import sample_bernoulli
from vulnscope.rg import OperatorSet, coupling_map, distribution_from_couplings, stability_matrix

# --- RBM layers: exact enumeration and sampling against the Jacobian of the coupling map ---


def random_layer(n_visible: int, n_hidden: int, seed: int):
    """An RBM with N(0, 1) parameters and random fine couplings g ~ N(0, 0.5²), float64."""
    generator = torch.Generator().manual_seed(seed)
    rbm = RBM(n_visible, n_hidden).double()
    with torch.no_grad():
        for param in rbm.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    g = 0.5 * torch.randn((1 << n_visible) - 1, generator=generator, dtype=torch.float64)
    return rbm.requires_grad_(False), g


def transition(rbm: RBM) -> torch.Tensor:
    """t(h | v) for every pair (2**n_visible, 2**n_hidden), by hand from the sigmoids."""
    v = binary_states(rbm.n_visible, dtype=torch.float64)
    h = binary_states(rbm.n_hidden, dtype=torch.float64)
    p = torch.sigmoid(v @ rbm.weight.t() + rbm.hidden_bias)
    return (h[None] * p[:, None] + (1 - h[None]) * (1 - p[:, None])).prod(-1)


def finite_difference_jacobian(g: torch.Tensor, rbm: RBM, step: float = 1e-5) -> torch.Tensor:
    columns = []
    for beta in range(g.shape[0]):
        shift = torch.zeros_like(g)
        shift[beta] = step
        columns.append((coupling_map(g + shift, rbm) - coupling_map(g - shift, rbm)) / (2 * step))
    return torch.stack(columns, -1)


def exact_stability(rbm: RBM, g: torch.Tensor):
    """T from every joint state (h_{k-1}, h_k), weighted by q_{k-1}(h_{k-1}) t_k(h_k | h_{k-1})."""
    n_v, n_h = rbm.n_visible, rbm.n_hidden
    q = distribution_from_couplings(g)
    weights = (q[:, None] * transition(rbm)).reshape(-1)
    fine_states = binary_states(n_v, dtype=torch.float64).repeat_interleave(1 << n_h, 0)
    coarse_states = binary_states(n_h, dtype=torch.float64).repeat(1 << n_v, 1)
    fine = OperatorSet.complete(n_v)(fine_states)
    coarse = OperatorSet.complete(n_h)(coarse_states)
    return stability_matrix(coarse, fine, weights)


LAYERS = [(2, 2, 0), (2, 3, 1), (3, 2, 2), (3, 3, 3), (4, 3, 4), (3, 4, 5), (4, 4, 6)]


@pytest.mark.parametrize(("n_visible", "n_hidden", "seed"), LAYERS)
def test_exact_stability_matrix_is_the_jacobian_of_the_coupling_map(n_visible, n_hidden, seed):
    rbm, g = random_layer(n_visible, n_hidden, seed)
    result = exact_stability(rbm, g)
    jacobian = finite_difference_jacobian(g, rbm)
    assert result.T.shape == ((1 << n_hidden) - 1, (1 << n_visible) - 1)
    assert result.T.dtype == torch.float64
    assert result.stderr is None and result.replicas is None
    assert float((result.T - jacobian).abs().max()) < 1e-6
    # not a trivially small matrix: the check compares real numbers
    assert float(jacobian.abs().max()) > 1e-2


def sampled_stability(rbm: RBM, g: torch.Tensor, samples: int, seed: int, blocks: int = 50):
    generator = torch.Generator().manual_seed(seed)
    q = distribution_from_couplings(g)
    index = torch.multinomial(q, samples, replacement=True, generator=generator)
    fine_states = binary_states(rbm.n_visible, dtype=torch.float64)[index]
    coarse_states = sample_bernoulli(rbm.hidden_probs(fine_states), generator)
    fine = OperatorSet.complete(rbm.n_visible)(fine_states)
    coarse = OperatorSet.complete(rbm.n_hidden)(coarse_states)
    return stability_matrix(coarse, fine, blocks=blocks)


def test_sampled_stability_matrix_agrees_within_jackknife_errors():
    z_scores = []
    for n_visible, n_hidden, seed in [(2, 3, 1), (3, 2, 2), (3, 3, 3), (4, 3, 4)]:
        rbm, g = random_layer(n_visible, n_hidden, seed)
        exact = exact_stability(rbm, g).T
        sampled = sampled_stability(rbm, g, samples=100_000, seed=seed)
        assert sampled.stderr is not None and sampled.num_samples == 100_000
        assert sampled.replicas is not None and sampled.replicas.shape == (50, *exact.shape)
        z_scores.append(((sampled.T - exact) / sampled.stderr).flatten())
    z = torch.cat(z_scores)
    outliers = float((z.abs() > 3).double().mean())
    assert outliers <= 0.02, (outliers, z.abs().max())
    # the errors are honest: neither far too small nor far too large
    assert 0.5 <= float(z.pow(2).mean()) <= 1.6, float(z.pow(2).mean())


def test_jackknife_error_shrinks_like_one_over_root_samples():
    rbm, g = random_layer(3, 3, seed=3)
    small = sampled_stability(rbm, g, samples=10_000, seed=11).stderr
    large = sampled_stability(rbm, g, samples=160_000, seed=12).stderr
    ratio = float((small / large).median())
    assert 3.0 <= ratio <= 5.5, ratio  # sqrt(16) = 4


def test_uniform_weights_equal_the_unweighted_estimate():
    generator = torch.Generator().manual_seed(0)
    fine = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    coarse = torch.tanh(fine @ torch.randn(3, 2, generator=generator, dtype=torch.float64))
    coarse = coarse + 0.1 * torch.randn(500, 2, generator=generator, dtype=torch.float64)
    weighted = stability_matrix(coarse, fine, torch.full((500,), 1 / 500, dtype=torch.float64))
    plain = stability_matrix(coarse, fine)
    torch.testing.assert_close(weighted.T, plain.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weighted.coarse_covariance, plain.coarse_covariance)
    assert weighted.condition_number == pytest.approx(plain.condition_number)


# --- blockings with a known T, independent of RBMs ---------------------------------------


def test_deterministic_linear_blocking_gives_the_inverse_transpose():
    # x ~ N(0, Σ), y = M x (M = mix): a linear field g on x becomes M^{-T} g on y, and the
    # sample covariances obey A = M Σ̂ Mᵀ, B = M Σ̂ exactly, so T = M^{-T} on any samples
    generator = torch.Generator().manual_seed(0)
    root = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    x = torch.randn(3000, 4, generator=generator, dtype=torch.float64) @ root.t()
    mix = torch.randn(4, 4, generator=generator, dtype=torch.float64) + 2 * torch.eye(4)
    result = stability_matrix(x @ mix.t(), x)
    expected = torch.linalg.inv(mix).t()
    torch.testing.assert_close(result.T, expected, rtol=1e-8, atol=1e-10)
    assert float(result.stderr.max()) < 1e-8
    eigenvalues = result.eigenvalues()
    reference = torch.linalg.eigvals(expected)
    reference = reference[reference.abs().argsort(descending=True)]
    torch.testing.assert_close(eigenvalues.values, reference, rtol=1e-7, atol=1e-9)
    assert bool((eigenvalues.magnitudes[:-1] >= eigenvalues.magnitudes[1:]).all())
    torch.testing.assert_close(result.relevant(), reference.abs() > 1)


def test_noisy_linear_blocking_matches_its_closed_form():
    # y = M x + ε (M = mix), ε ~ N(0, N) independent of x: shifting x's field by g moves the
    # mean of y by -M Σ g, so g' = (M Σ Mᵀ + N)^{-1} M Σ g
    generator = torch.Generator().manual_seed(1)
    root = torch.randn(3, 3, generator=generator, dtype=torch.float64) + torch.eye(3)
    sigma = root @ root.t()
    mix = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    noise = torch.diag(torch.tensor([0.5, 2.0], dtype=torch.float64))
    expected = torch.linalg.solve(mix @ sigma @ mix.t() + noise, mix @ sigma)
    samples = 200_000
    x = torch.randn(samples, 3, generator=generator, dtype=torch.float64) @ root.t()
    y = (
        x @ mix.t()
        + torch.randn(samples, 2, generator=generator, dtype=torch.float64) @ noise.sqrt()
    )
    result = stability_matrix(y, x)
    z = (result.T - expected) / result.stderr
    assert float(z.abs().max()) < 3.5, z
    # rectangular: eigenvalues are refused, singular values are given
    with pytest.raises(
        InvalidArgumentError, match=r"T is \(2, 3\), not square.*singular_values\(\)"
    ):
        result.eigenvalues()
    spectrum = result.singular_values()
    torch.testing.assert_close(spectrum.values, torch.linalg.svdvals(result.T))
    assert spectrum.stderr is not None and spectrum.stderr.shape == (2,)
    reference = torch.linalg.svdvals(expected)
    assert bool(((spectrum.values - reference).abs() < 4 * spectrum.stderr).all())


def ising_chain(samples: int, bonds: int, coupling: float, seed: int) -> torch.Tensor:
    """Open 1D Ising chains sampled exactly: s_{i+1} = s_i with probability (1 + tanh K) / 2."""
    generator = torch.Generator().manual_seed(seed)
    first = 2 * torch.randint(0, 2, (samples, 1), generator=generator) - 1
    same = torch.rand(samples, bonds, generator=generator, dtype=torch.float64)
    flips = torch.where(same < (1 + math.tanh(coupling)) / 2, 1, -1)
    return (first * torch.cumprod(torch.cat([torch.ones_like(first), flips], 1), 1)).double()


@pytest.mark.parametrize("coupling", [0.3, 0.8])
def test_decimated_ising_chain(coupling):
    # decimation keeps every other spin: tanh K' = tanh² K exactly, so T = dK'/dK =
    # 2 t / (1 + t²) with t = tanh K (the sign convention H = Σ g O cancels)
    spins = ising_chain(samples=40_000, bonds=32, coupling=coupling, seed=int(10 * coupling))
    kept = spins[:, ::2]
    fine = (spins[:, :-1] * spins[:, 1:]).sum(1, keepdim=True)
    coarse = (kept[:, :-1] * kept[:, 1:]).sum(1, keepdim=True)
    result = stability_matrix(coarse, fine)
    t = math.tanh(coupling)
    expected = 2 * t / (1 + t * t)
    stderr = float(result.stderr[0, 0])
    assert abs(float(result.T[0, 0]) - expected) < 3 * stderr, (float(result.T), expected, stderr)
    assert stderr < 0.01
    # and the chain itself is right: <s_i s_{i+1}> = tanh K
    assert float(fine.mean()) / 32 == pytest.approx(t, abs=0.005)


# --- bad input ---------------------------------------------------------------------------


def good_samples(samples: int = 40, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    fine = torch.randn(samples, 3, generator=generator, dtype=torch.float64)
    coarse = fine[:, :2] + 0.5 * torch.randn(samples, 2, generator=generator, dtype=torch.float64)
    return coarse, fine


def with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor[3, 1] = math.nan
    return tensor


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda c, f: stability_matrix(c, f[:-1]),
            InvalidArgumentError,
            r"coarse_ops has 40 samples \(rows\) but fine_ops has 39",
        ),
        (
            lambda c, f: stability_matrix(with_nan(c), f),
            InvalidArgumentError,
            "coarse_ops must be finite, got 1 NaN or infinite values",
        ),
        (
            lambda c, f: stability_matrix(c, with_nan(f)),
            InvalidArgumentError,
            "fine_ops must be finite, got 1 NaN",
        ),
        (
            lambda c, f: stability_matrix(c[:1], f[:1]),
            InvalidArgumentError,
            r"shape \(S, M\) with S >= 2 samples",
        ),
        (
            lambda c, f: stability_matrix(c[:, 0], f),
            InvalidArgumentError,
            r"coarse_ops must have shape \(S, M\).*\(40,\)",
        ),
        (
            lambda c, f: stability_matrix(c.long(), f),
            InvalidTypeError,
            "coarse_ops must be a floating torch.Tensor",
        ),
        (
            lambda c, f: stability_matrix(c, f.numpy()),
            InvalidTypeError,
            "fine_ops must be a floating torch.Tensor",
        ),
        (
            lambda c, f: stability_matrix(c, f, torch.full((40,), -1 / 40, dtype=torch.float64)),
            InvalidArgumentError,
            "weights must be probabilities >= 0",
        ),
        (
            lambda c, f: stability_matrix(c, f, torch.full((40,), 1 / 20, dtype=torch.float64)),
            InvalidArgumentError,
            "weights must sum to one, got sum 2",
        ),
        (
            lambda c, f: stability_matrix(c, f, torch.full((20,), 1 / 20, dtype=torch.float64)),
            InvalidArgumentError,
            r"weights must have shape \(40,\).*got \(20,\)",
        ),
        (
            lambda c, f: stability_matrix(c, f, torch.full((40,), math.nan, dtype=torch.float64)),
            InvalidArgumentError,
            "weights must be probabilities",
        ),
        (
            lambda c, f: stability_matrix(c, f, torch.ones(40, dtype=torch.long)),
            InvalidTypeError,
            "weights must be a floating torch.Tensor",
        ),
        (
            lambda c, f: stability_matrix(c, f, blocks=1),
            InvalidArgumentError,
            "blocks must be an integer >= 2",
        ),
        (
            lambda c, f: stability_matrix(c, f, ridge=-1.0),
            InvalidArgumentError,
            "ridge must be >= 0",
        ),
        (
            lambda c, f: stability_matrix(c, f, max_condition=0.5),
            InvalidArgumentError,
            "max_condition must be >= 1",
        ),
    ],
)
def test_bad_input(call, error, message):
    coarse, fine = good_samples()
    with pytest.raises(error, match=message):
        call(coarse, fine)


@pytest.mark.parametrize("weighted", [False, True])
def test_constant_coarse_column_is_singular(weighted):
    coarse, fine = good_samples()
    coarse = torch.cat([coarse, torch.ones(40, 1, dtype=torch.float64)], 1)
    weights = torch.full((40,), 1 / 40, dtype=torch.float64) if weighted else None
    with pytest.raises(
        SingularMatrixError,
        match=r"singular \(condition number inf\).*column"
        r"\(s\) 2 are constant",
    ) as info:
        stability_matrix(coarse, fine, weights)
    assert info.value.condition_number == math.inf


def test_duplicated_coarse_columns_are_singular_until_ridge():
    coarse, fine = good_samples()
    coarse = torch.cat([coarse, coarse[:, :1]], 1)
    with pytest.raises(
        SingularMatrixError, match=r"singular or nearly so \(condition number (inf|\d[\d.e+]*) >"
    ) as info:
        stability_matrix(coarse, fine)
    assert info.value.condition_number > 1e10
    ridge = 1e-9
    result = stability_matrix(coarse, fine, ridge=ridge)
    assert torch.isfinite(result.T).all()
    assert result.condition_number < 1e12
    # the ridge solution splits the duplicated operator's row evenly, and together the two
    # rows reproduce the solution without the duplicate
    reference = stability_matrix(coarse[:, :2], fine).T
    torch.testing.assert_close(result.T[0], result.T[2], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(result.T[0] + result.T[2], reference[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.T[1], reference[1], rtol=1e-5, atol=1e-7)


def test_ill_conditioned_but_regular_matrix_respects_max_condition():
    coarse, fine = good_samples()
    near = coarse[:, :1] + 1e-4 * fine[:, 2:]
    coarse = torch.cat([coarse, near], 1)
    condition = stability_matrix(coarse, fine).condition_number
    assert 1e6 < condition < 1e10
    with pytest.raises(SingularMatrixError, match="condition number") as info:
        stability_matrix(coarse, fine, max_condition=condition / 10)
    assert info.value.condition_number == pytest.approx(condition, rel=1e-6)
