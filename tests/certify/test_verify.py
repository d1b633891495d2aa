"""verify() and exact_radius() against independent references: grids, attacks, CROWN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vulnscope.attacks import PGD
from vulnscope.certify import certify, milp, smt
from vulnscope.certify.exact_radius import exact_radius
from vulnscope.certify.graph import read_graph
from vulnscope.certify.inputs import input_set
from vulnscope.certify.propagation import node_bounds
from vulnscope.certify.verification import verify
from vulnscope.errors import InvalidArgumentError, ModelError


def relu_net(seed: int, inputs: int = 2, hidden: int = 8, classes: int = 3) -> nn.Sequential:
    """A random two-hidden-layer ReLU MLP (seeds chosen where several classes meet in the box)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        ).double()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(3.0)
    return model.eval()


def grid(dims: int, steps: int) -> torch.Tensor:
    """Every point of a regular grid of [0, 1]^dims, ``steps`` points a side: (steps^dims, dims)."""
    axis = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    return torch.cartesian_prod(*([axis] * dims)).reshape(-1, dims)


@pytest.mark.parametrize(("seed", "dims", "steps"), [(3, 2, 401), (4, 2, 401), (0, 3, 61)])
def test_exact_radius_equals_a_dense_grid_search(seed, dims, steps):
    model = relu_net(seed, inputs=dims)
    x = torch.rand(4, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = model(x).argmax(1)
    radii = exact_radius(model, x, y, time_limit=20.0)
    points = grid(dims, steps)
    with torch.no_grad():
        predicted = model(points).argmax(1)
    spacing = 1.0 / (steps - 1)
    for k in range(x.shape[0]):
        wrong = points[predicted != y[k]]
        assert wrong.shape[0] > 0  # the seeds are chosen for it
        searched = (wrong - x[k]).abs().amax(1).min()
        # the grid's misclassified points are candidates of the exact minimum, and the
        # exact minimiser has a misclassified grid point within one spacing
        assert radii[k] <= searched + 1e-9
        assert searched <= radii[k] + spacing


def test_exact_radius_is_zero_on_a_mistake_and_refuses_a_smooth_network():
    model = relu_net(0)
    x = torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    wrong = (model(x).argmax(1) + 1) % 3
    assert exact_radius(model, x, wrong).item() == 0.0
    smooth = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    with pytest.raises(ModelError, match=r"'1' \(Tanh\)"):
        exact_radius(smooth, x, torch.tensor([0]))


@pytest.mark.parametrize("method", ["milp", "smt"])
def test_verify_contains_crown_and_attacks_and_its_counterexamples_hold(method):
    model = relu_net(3)
    x = torch.rand(12, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = model(x).argmax(1)
    eps = 0.08
    result = verify(model, x, y, eps=eps, method=method, time_limit=10.0)
    assert all(status in ("verified", "falsified") for status in result.status)
    assert bool(result.verified.any() and result.falsified.any())
    assert all(reason == "" for reason in result.reasons)
    certified = certify(model, x, y, eps=eps, method="crown").certified
    broken = PGD(norm="linf", eps=eps, steps=50, seed=1)(model, x, y).success
    assert bool((result.verified | ~certified).all())
    assert bool((result.falsified | ~broken).all())
    found = result.counterexamples[result.falsified]
    centers = x[result.falsified]
    assert bool(((found - centers).abs() <= eps).all() and ((found >= 0) & (found <= 1)).all())
    assert bool((model(found).argmax(1) != y[result.falsified]).all())
    assert bool(result.counterexamples[result.verified].isnan().all())
    # no point of a fine grid of a verified point's ball is misclassified
    offsets = (grid(2, 41) * 2 - 1) * eps
    for k in torch.nonzero(result.verified)[:, 0].tolist():
        ball = (x[k] + offsets).clamp(0, 1)
        assert bool((model(ball).argmax(1) == y[k]).all())
    assert len(result.seconds) == 12 and min(result.seconds) > 0


def test_milp_and_smt_agree_on_every_decided_point():
    # the solvers themselves on every point and class, without the attack and CROWN first
    decided = []
    for seed, dims, hidden, eps in [(8, 3, 6, 0.03), (3, 2, 8, 0.05)]:
        model = relu_net(seed, inputs=dims, hidden=hidden)
        x = torch.rand(6, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        y = model(x).argmax(1)
        graph = read_graph(model, x)
        with torch.no_grad():
            nodes = node_bounds(graph, input_set(x, norm="linf", eps=eps, bounds=(0, 1)))
        for k in range(x.shape[0]):
            flat = [(low[k].flatten().numpy(), high[k].flatten().numpy()) for low, high in nodes]
            others = [j for j in range(3) if j != int(y[k])]
            answers = [
                solver.solve_point(graph, flat, int(y[k]), others, time_limit=10.0)
                for solver in (milp, smt)
            ]
            if "unknown" not in (answers[0].status, answers[1].status):
                assert answers[0].status == answers[1].status
                decided.append(answers[0].status)
    assert len(decided) >= 10 and {"verified", "falsified"} <= set(decided)


def test_a_solver_out_of_time_answers_unknown_and_says_so():
    model = relu_net(0, inputs=10, hidden=32, classes=4)
    x = torch.rand(1, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = model(x).argmax(1)
    graph = read_graph(model, x)
    with torch.no_grad():
        nodes = node_bounds(graph, input_set(x, norm="linf", eps=0.5, bounds=(0, 1)))
    flat = [(low[0].flatten().numpy(), high[0].flatten().numpy()) for low, high in nodes]
    others = [j for j in range(4) if j != int(y[0])]
    outcome = milp.solve_point(graph, flat, int(y[0]), others, time_limit=0.01)
    assert outcome.status == "unknown" and "time" in outcome.reason
    outcome = smt.solve_point(graph, flat, int(y[0]), others, time_limit=0.001)
    assert outcome.status == "unknown" and "timeout" in outcome.reason


def test_a_max_pooling_network_is_solved_exactly():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        model = nn.Sequential(
            nn.Conv2d(1, 3, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 3)
        )
    model = model.double().eval()
    x = torch.rand(8, 1, 2, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = model(x).argmax(1)
    results = [verify(model, x, y, eps=0.15, method=m, time_limit=10.0) for m in ("milp", "smt")]
    assert results[0].status == results[1].status
    assert "unknown" not in results[0].status
    offsets = (torch.cartesian_prod(*[torch.linspace(-1, 1, 7, dtype=torch.float64)] * 4)) * 0.15
    for k in torch.nonzero(results[0].verified)[:, 0].tolist():
        ball = (x[k] + offsets.reshape(-1, 1, 2, 2)).clamp(0, 1)
        assert bool((model(ball).argmax(1) == y[k]).all())


def test_a_smooth_network_is_unknown_with_the_layer_named_never_verified_wrongly():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
        with torch.no_grad():
            model[0].weight.mul_(4)
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = model(x).argmax(1)
    result = verify(model, x, y, eps=0.1)
    unknown = [k for k, status in enumerate(result.status) if status == "unknown"]
    assert unknown
    assert all("'1' (Tanh)" in result.reasons[k] for k in unknown)
    certified = certify(model, x, y, eps=0.1, method="crown").certified
    assert result.verified.tolist() == certified.tolist()


def test_l2_answers_from_the_certificate_and_the_attack_and_explains_the_rest():
    model = relu_net(4)
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = model(x).argmax(1)
    result = verify(model, x, y, norm="l2", eps=0.2)
    certified = certify(model, x, y, norm="l2", eps=0.2, method="crown").certified
    assert result.verified.tolist() == certified.tolist()
    found = result.counterexamples[result.falsified]
    assert bool(((found - x[result.falsified]).norm(dim=1) <= 0.2).all())
    assert bool((model(found).argmax(1) != y[result.falsified]).all())
    unknown = [k for k, status in enumerate(result.status) if status == "unknown"]
    assert unknown
    assert all("quadratic" in result.reasons[k] for k in unknown)


def test_float32_models_get_counterexamples_inside_the_ball_in_their_own_dtype():
    model = relu_net(3).float()
    x = torch.rand(16, 2, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    result = verify(model, x, y, eps=0.1)
    assert result.counterexamples.dtype == torch.float32
    found = result.counterexamples[result.falsified]
    assert found.shape[0] > 0
    assert bool(((found.double() - x[result.falsified].double()).abs() <= 0.1).all())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": -0.1}, "eps must be > 0"),
        ({"time_limit": 0}, "time_limit must be > 0"),
        ({"method": "lp"}, "method must be one of"),
        ({"norm": "l1"}, "norm must be one of"),
    ],
)
def test_bad_arguments_are_refused_by_name(change, message):
    model = relu_net(0)
    x = torch.rand(2, 2, dtype=torch.float64)
    arguments = {"eps": 0.1, **change}
    with pytest.raises(InvalidArgumentError, match=message):
        verify(model, x, torch.tensor([0, 1]), **arguments)


def test_inputs_outside_the_box_are_refused():
    x = torch.tensor([[0.5, 1.5]], dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match=r"inputs must lie inside bounds \[0.0, 1.0\]"):
        verify(relu_net(0), x, torch.tensor([0]), eps=0.1)
    with pytest.raises(InvalidArgumentError, match="inputs must lie inside bounds"):
        exact_radius(relu_net(0), x, torch.tensor([0]))
