import pytest
import torch

from vulnscope.errors import InvalidArgumentError
from vulnscope.rbm import DeepRBM
from vulnscope.rg import OperatorSet, stability_matrix
from vulnscope.rg.analysis import _label_layer, analyse_input, choose_operators
from vulnscope.rg.distance import class_change_distances, frozen_noise_classifier
from vulnscope.rg.study import mean_field_fisher, rg_analysis


def random_network(widths, classes, seed, scale=1.0):
    network = DeepRBM(widths, classes, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rbm in network.rbms:
            rbm.weight.copy_(scale * torch.randn(rbm.weight.shape, generator=generator))
            rbm.hidden_bias.copy_(0.5 * torch.randn(rbm.hidden_bias.shape, generator=generator))
    return network


def exact_fisher(network, x):
    """F = Σ_y q (∇_x log q)(∇_x log q)ᵀ with q the exactly enumerated q_N(y | x)."""
    inputs = x.reshape(1, -1).double().requires_grad_(True)
    log_q = network.exact_up(inputs)[-1][0].log()
    rows = [torch.autograd.grad(value, inputs, retain_graph=True)[0][0] for value in log_q]
    grads = torch.stack(rows)
    q = log_q.exp().detach()
    return (grads.t() * q) @ grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_rule_fisher_matches_autograd_on_the_exact_pass(seed):
    network = random_network([5, 4, 4], 3, seed)
    x = (torch.rand(5, generator=torch.Generator().manual_seed(seed + 10)) > 0.5).float()
    ops = choose_operators(network, "complete")
    result = analyse_input(network, x, ops, samples=60_000, blocks=30, top_k=2, seed=seed)
    reference = torch.linalg.eigvalsh(exact_fisher(network, x)).flip(0)
    for k in range(2):
        error = float(result.fisher_stderr[k])
        assert abs(float(result.fisher_eigenvalues[k]) - float(reference[k])) < 4 * error + 1e-3
    # the top eigenvector: the dangerous direction
    vector = torch.linalg.eigh(exact_fisher(network, x)).eigenvectors[:, -1]
    assert float((vector * result.fisher_eigenvectors[0]).sum().abs()) > 0.95


def test_chain_rule_fisher_error_shrinks_and_bias_vanishes_with_more_chains():
    network = random_network([5, 4, 4], 3, 3)
    x = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    ops = choose_operators(network, "complete")
    reference = float(torch.linalg.eigvalsh(exact_fisher(network, x))[-1])
    small = analyse_input(network, x, ops, samples=4_000, seed=0)
    large = analyse_input(network, x, ops, samples=64_000, seed=0)
    assert float(large.fisher_stderr[0]) < 0.5 * float(small.fisher_stderr[0])
    assert abs(float(large.fisher_eigenvalues[0]) - reference) < 4 * float(large.fisher_stderr[0])


def test_label_layer_closed_form_equals_the_weighted_generic_estimator():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 4, generator=generator, dtype=torch.float64), -1)
    fine = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    layer, reference, cov, _ = _label_layer(probs, fine, blocks=10)
    kept = [c for c in range(4) if c != reference]
    indicators = torch.eye(4, dtype=torch.float64)[:, kept]
    weights = (probs / probs.shape[0]).reshape(-1)
    generic = stability_matrix(
        indicators.repeat(300, 1), fine.repeat_interleave(4, 0), weights / weights.sum()
    )
    torch.testing.assert_close(layer.T, generic.T, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cov, generic.coarse_covariance, rtol=1e-9, atol=1e-12)
    assert layer.stderr is not None and bool((layer.stderr > 0).all())


def test_frozen_units_drop_out_instead_of_making_a_singular_system():
    network = random_network([5, 4, 4], 3, 4)
    with torch.no_grad():
        network.rbms[1].hidden_bias[0] = 60.0  # unit 0 of layer 2 is always on
    ops = choose_operators(network, "pairs")
    result = analyse_input(network, torch.ones(5), ops, samples=4_000, seed=0)
    frozen = [i for i, subset in enumerate(ops.subsets) if 0 in subset]
    assert bool((result.layers[0].T[frozen] == 0).all())  # rows of level-2 operators
    assert bool((result.layers[1].T[:, frozen] == 0).all())
    assert torch.isfinite(result.fisher_eigenvalues).all()


def test_mean_field_fisher_matches_autograd_jacobian():
    network = random_network([6, 5, 5], 4, 5, scale=0.7)
    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(1))
    fisher = mean_field_fisher(network, x)
    for row in range(2):
        inputs = x[row : row + 1].double()
        jac = torch.autograd.functional.jacobian(lambda v: network.double()(v)[0], inputs)[:, 0]
        network.float()
        p = network.double()(inputs)[0].exp().detach()
        network.float()
        expected = jac.t() @ (torch.diag(p) - torch.outer(p, p)) @ jac
        torch.testing.assert_close(fisher[row], expected, rtol=1e-4, atol=1e-6)


def test_class_change_distance_is_where_the_frozen_classifier_flips():
    network = random_network([6, 5, 5], 3, 6)
    x = (torch.rand(3, 6, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    directions = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(3))
    distances = class_change_distances(
        network, x, directions, max_norm=8.0, both_signs=False, chains=64, seed=0
    )
    predict = frozen_noise_classifier(network, chains=64, seed=0)
    start = predict(x)
    unit = directions / directions.norm(dim=-1, keepdim=True)
    resolution = 8.0 / 24 / 2**8
    for b in range(3):
        for d in range(2):
            distance = float(distances[b, d])
            if distance == float("inf"):
                continue
            after = predict((x[b] + distance * unit[b, d])[None])
            before = predict((x[b] + max(distance - 2 * resolution, 0) * unit[b, d])[None])
            assert int(after) != int(start[b])
            assert int(before) == int(start[b]) or distance < 3 * resolution


def test_rg_analysis_report_is_consistent_and_serialisable():
    import json

    network = random_network([8, 6, 6, 6], 3, 7, scale=0.8)
    x = (torch.rand(4, 8, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    y = torch.tensor([0, 1, 2, 0])
    report = rg_analysis(network, x, y, samples=3_000, random_directions=3, seed=0)
    assert report.leading.shape == (4, 3) and report.relevant.shape == (4, 2)
    assert report.fisher_eigenvectors.shape == (4, 3, 8)
    norms = report.fisher_eigenvectors.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)
    record = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert record["summary"]["inputs"] == 4
    assert len(record["summary"]["layers"]) == 3
    predict = frozen_noise_classifier(network, chains=256, seed=0)
    for row, index in enumerate(report.indices.tolist()):
        distance = float(report.distances["fisher"][row])
        if distance != float("inf"):  # the class changes along the recorded sign of v_1
            step = distance * float(report.fisher_sign[row]) * report.fisher_eigenvectors[row, 0]
            moved = x[index] + step.float()
            assert int(predict(moved[None])) != int(predict(x[index][None]))
    again = rg_analysis(network, x, y, samples=3_000, random_directions=3, seed=0)
    torch.testing.assert_close(again.leading, report.leading)


def test_choose_operators_rejects_unequal_widths_and_shallow_networks():
    with pytest.raises(InvalidArgumentError, match="equal hidden widths"):
        choose_operators(DeepRBM([8, 6, 5], 3), "pairs")
    with pytest.raises(InvalidArgumentError, match="depth >= 2"):
        choose_operators(DeepRBM([8], 3), "pairs")
    with pytest.raises(InvalidArgumentError, match="operators must be one of"):
        choose_operators(DeepRBM([8, 6, 6], 3), "quads")


def test_operator_sets_keep_their_shape_contract():
    ops = choose_operators(DeepRBM([8, 6, 6], 3, seed=0), "triples")
    assert isinstance(ops, OperatorSet) and len(ops) == 6 + 6 + 3
