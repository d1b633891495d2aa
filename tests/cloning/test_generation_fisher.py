import pytest
import torch

from vulnscope.cloning.generation_fisher import (
    GenerationPassFisher,
    exact_generation_chain_fisher,
    exact_generation_fisher,
    input_operators,
)
from vulnscope.cloning.reverse import ReverseModel
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm import DeepRBM
from vulnscope.rbm.exact import push_forward
from vulnscope.rg import distribution_from_couplings, exact_couplings

# one-hot, interior and near-vertex probability vectors, and the centre of the simplex
OUTPUTS = torch.tensor(
    [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.2, 0.5, 0.3],
        [0.05, 0.15, 0.8],
        [1 / 3, 1 / 3, 1 / 3],
    ],
    dtype=torch.float64,
)


def random_network(widths, classes, seed, scale=1.5):
    """Weights far from the near-zero initialisation, so that every pass is far from uniform."""
    network = DeepRBM(widths, classes, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rbm in network.rbms:
            rbm.weight.copy_(scale * torch.randn(rbm.weight.shape, generator=generator))
            rbm.visible_bias.copy_(0.5 * torch.randn(rbm.visible_bias.shape, generator=generator))
            rbm.hidden_bias.copy_(0.5 * torch.randn(rbm.hidden_bias.shape, generator=generator))
    return network


def outputs_for(classes, seed):
    generator = torch.Generator().manual_seed(seed)
    soft = torch.softmax(2 * torch.randn(3, classes, generator=generator, dtype=torch.float64), -1)
    return torch.cat([torch.eye(classes, dtype=torch.float64)[:2], soft])


@pytest.mark.parametrize(
    ("widths", "classes", "seed"),
    [([4, 3, 3], 3, 0), ([4, 3, 3], 3, 1), ([4, 3, 3], 3, 2), ([3, 3, 3, 3], 4, 3), ([5, 2], 3, 4)],
)
def test_chain_of_exact_stability_matrices_equals_autograd_on_the_enumerated_pass(
    widths, classes, seed
):
    network = random_network(widths, classes, seed)
    outputs = OUTPUTS if classes == 3 else outputs_for(classes, seed)
    reference = exact_generation_fisher(network, outputs)
    chain = exact_generation_chain_fisher(network, outputs)
    assert float(torch.linalg.eigvalsh(reference)[:, -1].min()) > 1e-3  # not a trivial zero
    torch.testing.assert_close(chain, reference, rtol=1e-8, atol=1e-10)


def test_exact_reference_is_the_negative_expected_hessian_of_the_log_likelihood():
    network = random_network([4, 3, 3], 3, 5)
    for y in OUTPUTS[2:4]:
        q = network.exact_down(y[None])[-1][0].detach()

        def expected_log_likelihood(v, q=q):
            return (q * network.exact_down(v[None])[-1][0].log()).sum()

        hessian = torch.autograd.functional.hessian(expected_log_likelihood, y)
        fisher = exact_generation_fisher(network, y[None])[0]
        torch.testing.assert_close(fisher, -hessian, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 2])
def test_monte_carlo_chain_agrees_with_the_exact_one_within_its_jackknife_error(seed):
    network = random_network([4, 3, 3], 3, seed)
    fim = GenerationPassFisher(network, operators="complete", samples=40_000, seed=seed)
    for y in OUTPUTS[[0, 2, 3]]:
        result = fim.analyse(y)
        exact = exact_generation_fisher(network, y[None])[0]
        values, vectors = torch.linalg.eigh(exact)
        for k in range(2):
            error = float(result.fisher_stderr[k])
            assert 0 < error < 0.1 * float(values[-1])
            # the estimator is a ratio of sample covariances: biased by O(1/S), well below 4σ
            assert abs(float(result.fisher_eigenvalues[k]) - float(values[-1 - k])) < 4 * error
        assert float((vectors[:, -1] @ result.fisher_eigenvectors[0]).abs()) > 0.97
        difference = torch.linalg.matrix_norm(result.fisher - exact)
        assert float(difference) < 0.1 * float(torch.linalg.matrix_norm(exact))


def test_stability_matrix_of_a_hidden_layer_is_the_jacobian_of_the_exact_coupling_map():
    network = random_network([4, 3, 3], 3, 7)
    y = OUTPUTS[3]
    fim = GenerationPassFisher(network, operators="complete", samples=40_000, seed=0)
    result = fim.analyse(y)
    rbm = network.rbms[1]  # joins h_1 (visible) and h_2 (hidden): T̃^(2) = ∂g̃^(1)/∂g̃^(2)

    def coupling_map_down(g):
        return exact_couplings(
            push_forward(distribution_from_couplings(g)[None], rbm, upward=False)
        )[0]

    couplings = exact_couplings(network.exact_down(y[None])[0][0].detach())
    jacobian = torch.autograd.functional.jacobian(coupling_map_down, couplings)
    layer = result.layers[0]
    assert layer.stderr is not None
    assert bool(((layer.T - jacobian).abs() < 5 * layer.stderr + 1e-3).all())
    exact_leading = float(torch.linalg.eigvals(jacobian).abs().max())
    assert abs(float(result.leading[0]) - exact_leading) < 4 * float(result.leading_stderr[0])
    assert result.relevant.shape == (1,)
    assert result.unstable == bool(result.relevant[0] > 0)


def test_output_fisher_is_symmetric_psd_and_matches_analyse():
    network = random_network([6, 4, 4], 3, 8, scale=1.0)
    fim = GenerationPassFisher(network, samples=3_000, seed=0)
    probs = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), -1)
    fisher = fim.output_fisher(probs)
    assert fisher.shape == (4, 3, 3) and fisher.dtype == torch.float64
    assert torch.equal(fisher, fisher.transpose(1, 2))
    values = torch.linalg.eigvalsh(fisher)
    assert bool((values >= -1e-12 * values[:, -1:]).all()) and bool((values[:, -1] > 0).all())
    torch.testing.assert_close(fim.analyse(probs[1].double()).fisher, fisher[1])
    assert isinstance(fim, ReverseModel) and fim.num_classes == 3


def test_same_seed_same_result_and_rows_do_not_depend_on_the_batch():
    network = random_network([6, 4, 4], 3, 9, scale=1.0)
    probs = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)), -1)
    fim = GenerationPassFisher(network, samples=2_000, seed=3)
    batch = fim.output_fisher(probs)
    assert torch.equal(
        batch, GenerationPassFisher(network, samples=2_000, seed=3).output_fisher(probs)
    )
    for row in range(3):
        assert torch.equal(fim.output_fisher(probs[row : row + 1]), batch[row : row + 1])
    assert torch.equal(fim.output_fisher(probs.flip(0)), batch.flip(0))
    other = GenerationPassFisher(network, samples=2_000, seed=4).output_fisher(probs)
    assert not torch.equal(other, batch)
    unseeded = GenerationPassFisher(network, samples=2_000, seed=None).output_fisher(probs)
    assert unseeded.shape == (3, 3, 3)


def test_frozen_pixels_give_zero_rows_and_a_frozen_level_a_zero_fisher():
    network = random_network([4, 3, 3], 3, 10)
    with torch.no_grad():
        network.rbms[0].visible_bias[1] = -60.0  # pixel 1 is never on in generation
    fim = GenerationPassFisher(network, operators="complete", samples=20_000, seed=0)
    result = fim.analyse(OUTPUTS[2])
    frozen = [i for i, subset in enumerate(result.input_operators.subsets) if 1 in subset]
    assert bool((result.layers[-1].T[frozen] == 0).all())
    assert bool((result.jacobian[frozen] == 0).all())
    exact = exact_generation_fisher(network, OUTPUTS[2:3])[0]
    torch.testing.assert_close(result.fisher, exact, rtol=0.15, atol=1e-3)
    with torch.no_grad():
        network.rbms[-1].visible_bias.fill_(60.0)  # level N-1 always fully on: nothing passes
    assert torch.equal(fim.output_fisher(OUTPUTS[2:3]), torch.zeros(1, 3, 3, dtype=torch.float64))


def test_report_shapes_and_tangent_directions():
    network = random_network([6, 4, 4, 4], 3, 11, scale=1.0)
    result = GenerationPassFisher(network, samples=3_000, seed=0).analyse(OUTPUTS[3])
    ops = result.hidden_operators
    assert len(result.layers) == 3
    assert [layer.T.shape for layer in result.layers] == [
        (len(ops), len(ops)),
        (len(ops), len(ops)),
        (len(result.input_operators), len(ops)),
    ]
    assert result.leading.shape == result.singular.shape == (3,)
    assert result.relevant.shape == (2,)
    assert result.jacobian.shape == (len(result.input_operators), 3)
    assert result.top_derivative.shape == (len(ops), 3)
    norms = result.fisher_eigenvectors.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(3, dtype=torch.float64))
    assert result.tangent_eigenvectors.shape == (2, 3)
    sums = result.tangent_eigenvectors.sum(1)
    torch.testing.assert_close(sums, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # the tangent eigenvalues interlace the full ones (a restriction to a hyperplane)
    assert float(result.tangent_eigenvalues[0]) <= float(result.fisher_eigenvalues[0]) + 1e-12
    assert 0 < result.relative_error < 1 and 0 < result.top_vector_stderr < 1
    assert result.pixel_probs.shape == (6,)


def test_input_operator_sets():
    network = random_network([6, 4, 4], 3, 12)
    assert len(input_operators(network, "singles")) == 6
    pairs = input_operators(network, "pairs")
    assert len(pairs) == 12 and pairs.orders == [1] * 6 + [2] * 6
    gram = (network.rbms[0].weight.t() @ network.rbms[0].weight).abs().detach()
    strongest = max(((i, j) for i in range(6) for j in range(i + 1, 6)), key=lambda p: gram[p])
    assert strongest in pairs.subsets
    assert len(input_operators(network, "triples")) == 15
    assert len(input_operators(network, "complete")) == 63


def test_validation_messages():
    network = random_network([4, 3, 3], 3, 13)
    fim = GenerationPassFisher(network, samples=500, blocks=5)
    with pytest.raises(InvalidArgumentError, match=r"probs must have shape \(B, 3\).*\(2, 4\)"):
        fim.output_fisher(torch.ones(2, 4) / 4)
    with pytest.raises(InvalidArgumentError, match=r"probs must have shape \(B, 3\).*\(3,\)"):
        fim.output_fisher(torch.ones(3) / 3)
    with pytest.raises(InvalidArgumentError, match="probs must be finite, got 1 NaN"):
        fim.output_fisher(torch.tensor([[0.5, float("nan"), 0.5]]))
    with pytest.raises(InvalidTypeError, match=r"probs must be a floating torch\.Tensor"):
        fim.output_fisher([[0.2, 0.3, 0.5]])
    with pytest.raises(InvalidTypeError, match=r"probs must be a floating torch\.Tensor.*int64"):
        fim.output_fisher(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="probs must have shape"):
        exact_generation_fisher(network, torch.ones(2, 2))
    with pytest.raises(InvalidArgumentError, match=r"y must be one output vector of shape \(3,\)"):
        fim.analyse(OUTPUTS[:1])
    with pytest.raises(InvalidTypeError, match=r"network must be a vulnscope\.rbm\.DeepRBM"):
        GenerationPassFisher(torch.nn.Linear(3, 3))
    with pytest.raises(InvalidArgumentError, match="depth >= 2"):
        GenerationPassFisher(DeepRBM([4], 3))
    with pytest.raises(InvalidArgumentError, match="operators must be one of"):
        GenerationPassFisher(network, operators="correlation")
    with pytest.raises(InvalidArgumentError, match="samples must be an integer >= 2"):
        GenerationPassFisher(network, samples=1)
    with pytest.raises(InvalidArgumentError, match="equal hidden widths"):
        GenerationPassFisher(DeepRBM([4, 3, 2], 3))
    assert fim.output_fisher(torch.zeros(0, 3)).shape == (0, 3, 3)
