"""Output defences: the shared contract, each defence against a reference, bad input."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from helpers import tiny_classifier
from vulnscope._random import row_generators, row_seeds
from vulnscope.cloning.defence import OutputDefence, Published, Undefended
from vulnscope.cloning.fisher_poisoning import FisherPoisoning
from vulnscope.cloning.label_only import LabelOnly
from vulnscope.cloning.mad import MAD, log_prob_gram, untrained_copy
from vulnscope.cloning.random_poisoning import RandomPoisoning
from vulnscope.cloning.reverse import ReverseModel
from vulnscope.cloning.reverse_sigmoid import ReverseSigmoid
from vulnscope.cloning.rounding import Rounding, round_probabilities
from vulnscope.cloning.simplex import max_l1_budget
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.rbm import DeepRBM

DIGITS_BUDGETS = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 1.5]


def identity(x: torch.Tensor) -> torch.Tensor:
    """A 'classifier' whose queries are its logits: tests choose the true outputs directly."""
    return x


class FixedFisher:
    """A fake reverse model: ``F̃(y) = A`` for every y."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix = matrix

    @property
    def num_classes(self) -> int:
        return self.matrix.shape[0]

    def output_fisher(self, probs: torch.Tensor) -> torch.Tensor:
        return self.matrix.expand(probs.shape[0], -1, -1).clone()


class OutputDependentFisher(FixedFisher):
    """``F̃(y) = A + diag(1 / (y + 0.01))``: a different matrix for every output."""

    def output_fisher(self, probs: torch.Tensor) -> torch.Tensor:
        return self.matrix + torch.diag_embed(1.0 / (probs + 0.01))


def random_psd(classes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(classes, classes, generator=generator, dtype=torch.float64)
    return factor @ factor.T


def linear_surrogate(in_features: int, classes: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes)).double().eval()


def gaps(probs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    own = probs.gather(1, classes[:, None])[:, 0]
    return own - probs.scatter(1, classes[:, None], -1.0).max(1).values


# Every defence, built around a model of the given number of classes on (B, C) logits.
DEFENCES = {
    "undefended": lambda classes: Undefended(identity),
    "label-only": lambda classes: LabelOnly(identity),
    "rounding": lambda classes: Rounding(identity, decimals=2),
    "reverse-sigmoid": lambda classes: ReverseSigmoid(identity, beta=0.3, gamma=0.5),
    "random": lambda classes: RandomPoisoning(identity, 0.2, seed=3),
    "fisher": lambda classes: FisherPoisoning(
        identity, 0.2, reverse=OutputDependentFisher(random_psd(classes, 1))
    ),
    "mad": lambda classes: MAD(identity, 0.2, surrogate=linear_surrogate(classes, classes)),
}


def random_logits(seed: int, n: int = 12, classes: int = 5, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, classes, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------- the shared contract


@pytest.mark.parametrize("name", sorted(DEFENCES))
def test_every_defence_publishes_probability_vectors_and_reports_their_l1(name):
    defence = DEFENCES[name](5)
    x = random_logits(0)
    published = defence.publish(x)
    assert isinstance(published, Published)
    assert published.probs.dtype == published.true_probs.dtype == torch.float64
    assert published.probs.shape == (12, 5) and published.l1.shape == (12,)
    assert bool((published.probs >= 0).all())
    torch.testing.assert_close(
        published.probs.sum(-1), torch.ones(12, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(published.true_probs, torch.softmax(x, -1), atol=1e-15, rtol=0)
    torch.testing.assert_close(published.l1, (published.probs - published.true_probs).abs().sum(-1))
    assert torch.equal(defence(x), published.probs)
    if defence.preserves_argmax:
        assert torch.equal(published.probs.argmax(-1), x.argmax(-1))
    if defence.budget is not None:
        assert bool((published.l1 <= defence.budget + 1e-12).all())
    record = json.loads(json.dumps(defence.describe()))
    assert record["name"] == type(defence).__name__
    assert record["budget"] == defence.budget


@pytest.mark.parametrize("name", sorted(DEFENCES))
def test_every_defence_answers_a_query_the_same_way_in_any_batch(name):
    defence = DEFENCES[name](5)
    x = random_logits(1)
    whole = defence(x)
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(defence(x[permutation]), whole[permutation], atol=1e-15, rtol=0)
    torch.testing.assert_close(defence(x[3:4]), whole[3:4], atol=1e-15, rtol=0)
    torch.testing.assert_close(defence(x), whole, atol=0, rtol=0)


def test_the_model_runs_in_eval_mode_and_is_left_as_it_was():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9)).double().train()
    x = torch.randn(6, 4, dtype=torch.float64)
    defence = RandomPoisoning(model, 0.1)
    first, second = defence.true_probabilities(x), defence.true_probabilities(x)
    assert torch.equal(first, second)  # no dropout
    assert model.training and model[1].training
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert not first.requires_grad


def test_the_wrapped_model_is_a_submodule_and_repr_shows_the_hyperparameters():
    model = nn.Linear(4, 3)
    defence = RandomPoisoning(model, 0.1, margin=0.01, seed=7)
    assert defence.model is model
    assert "budget=0.1, margin=0.01, seed=7" in repr(defence)
    assert "(model): Linear(in_features=4" in repr(defence)
    assert defence.describe() == {
        "name": "RandomPoisoning",
        "budget": 0.1,
        "parameters": {"margin": 0.01, "seed": 7},
    }


def test_published_is_frozen():
    published = Undefended(identity).publish(random_logits(0, 2))
    with pytest.raises(AttributeError):
        published.probs = published.true_probs  # type: ignore[misc]


def test_a_deep_rbm_victim_plugs_in_as_it_is():
    net = DeepRBM([6, 4, 4], num_classes=3, seed=0)
    x = (torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    true = Undefended(net).true_probabilities(x)
    torch.testing.assert_close(true, net(x).double().exp(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the arg-max, everywhere


@pytest.fixture(scope="module")
def digits_outputs(digits_cnn, digits_test):
    return digits_test.x, Undefended(digits_cnn).true_probabilities(digits_test.x)


@pytest.mark.parametrize("budget", DIGITS_BUDGETS)
def test_no_defence_that_preserves_the_argmax_changes_a_digit_label_at_any_budget(
    digits_cnn, digits_outputs, budget
):
    x, true = digits_outputs
    labels = true.argmax(-1)
    defences = [
        Undefended(digits_cnn),
        LabelOnly(digits_cnn),
        RandomPoisoning(digits_cnn, budget),
        FisherPoisoning(digits_cnn, budget, reverse=OutputDependentFisher(random_psd(10, 0))),
        MAD(digits_cnn, budget, surrogate=linear_surrogate(64, 10).float(), vectorize=True),
    ]
    for defence in defences:
        assert defence.preserves_argmax
        published = defence.publish(x)
        assert torch.equal(published.probs.argmax(-1), labels), type(defence).__name__
        assert bool((published.probs >= 0).all())
        torch.testing.assert_close(
            published.probs.sum(-1), torch.ones(len(x), dtype=torch.float64), atol=1e-9, rtol=0
        )
        if defence.budget is not None:
            assert bool((published.l1 <= budget + 1e-12).all())
            # Where a confident output has room, the whole budget is spent.
            roomy = gaps(true, labels) >= budget + 2e-3
            assert bool(((published.l1 - budget).abs() < 1e-9)[roomy].all())


def test_mad_with_its_default_surrogate_keeps_the_digit_labels(digits_cnn, digits_outputs):
    x, true = digits_outputs
    published = MAD(digits_cnn, 0.5).publish(x[:24])
    assert torch.equal(published.probs.argmax(-1), true[:24].argmax(-1))
    torch.testing.assert_close(
        published.l1, torch.full((24,), 0.5, dtype=torch.float64), atol=1e-9, rtol=0
    )


@st.composite
def near_ties(draw):
    classes = draw(st.integers(2, 6))
    base = draw(arrays(np.float64, (4, classes), elements=st.floats(-2, 2)))
    offsets = draw(arrays(np.float64, (4,), elements=st.sampled_from([0.0, 1e-12, 1e-8, 1e-5])))
    # Tie the two largest logits of each row up to an offset.
    order = np.argsort(-base, axis=1)
    for row in range(4):
        base[row, order[row, 1]] = base[row, order[row, 0]] - offsets[row]
    budget = draw(st.floats(0.01, 0.99)) * max_l1_budget(classes)
    return torch.from_numpy(base), budget


@given(near_ties(), st.integers(0, 2**16))
def test_near_ties_never_change_the_published_class(problem, seed):
    logits, budget = problem
    classes = logits.shape[1]
    for defence in (
        RandomPoisoning(identity, budget, seed=seed),
        FisherPoisoning(identity, budget, reverse=FixedFisher(random_psd(classes, seed))),
        MAD(identity, budget, surrogate=linear_surrogate(classes, classes, seed)),
        LabelOnly(identity),
    ):
        probs = defence(logits)
        assert torch.equal(probs.argmax(-1), torch.softmax(logits, -1).argmax(-1))


@st.composite
def poisoning_problems(draw):
    classes = draw(st.integers(2, 7))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0, 6.0]))
    logits = draw(arrays(np.float64, (5, classes), elements=st.floats(-1, 1))) * scale
    budget = draw(st.floats(0.005, 0.99)) * max_l1_budget(classes)
    margin = draw(st.sampled_from([0.0, 1e-3, 0.02]))
    return torch.from_numpy(logits), budget, margin


@pytest.mark.parametrize("kind", ["fisher", "random", "mad"])
@given(problem=poisoning_problems(), seed=st.integers(0, 2**16))
def test_poisoned_outputs_are_probabilities_of_the_requested_l1_size(kind, problem, seed):
    logits, budget, margin = problem
    classes = logits.shape[1]
    defence: OutputDefence
    if kind == "fisher":
        reverse = OutputDependentFisher(random_psd(classes, seed))
        defence = FisherPoisoning(identity, budget, reverse=reverse, margin=margin)
    elif kind == "random":
        defence = RandomPoisoning(identity, budget, margin=margin, seed=seed)
    else:
        surrogate = linear_surrogate(classes, classes, seed)
        defence = MAD(identity, budget, surrogate=surrogate, margin=margin)
    published = defence.publish(logits)
    probs, true = published.probs, published.true_probs
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-9, rtol=0)
    labels = true.argmax(-1)
    assert torch.equal(probs.argmax(-1), labels)
    required = torch.minimum(gaps(true, labels), torch.tensor(margin, dtype=torch.float64))
    assert bool((gaps(probs, labels) >= required).all())
    assert bool((published.l1 <= budget + 1e-12).all())
    # An L1 move of b lowers the gap by at most b: with gap >= b + margin the whole budget
    # fits, and these defences must spend it.
    roomy = gaps(true, labels) >= budget + margin
    assert bool(((published.l1 - budget).abs() < 1e-9)[roomy].all())


# ---------------------------------------------------------------- FisherPoisoning


@pytest.mark.parametrize("classes", [3, 5, 10])
def test_fisher_poisoning_moves_along_the_top_eigenvector_of_the_projected_fisher(classes):
    reverse = OutputDependentFisher(random_psd(classes, classes))
    # Confident but not extreme outputs: a small step stays inside the simplex.
    logits = random_logits(classes, n=8, classes=classes, scale=0.5)
    logits[:, 0] += 2.0
    budget = 0.02
    defence = FisherPoisoning(identity, budget, reverse=reverse, search="eigenvector")
    published = defence.publish(logits)
    p = published.true_probs
    projector = np.eye(classes) - np.ones((classes, classes)) / classes
    for row in range(8):
        fisher = reverse.output_fisher(p[row : row + 1])[0].numpy()
        values, vectors = np.linalg.eigh(projector @ fisher @ projector)
        assert values[-1] - values[-2] > 1e-6 * values[-1]
        top = vectors[:, -1]
        step = (published.probs[row] - p[row]).numpy()
        # The straight step of L1 size `budget` along u_1, oriented away from the class.
        expected = top * (-1.0 if top[int(p[row].argmax())] > 0 else 1.0)
        expected = budget * expected / np.abs(expected).sum()
        np.testing.assert_allclose(step, expected, atol=1e-12)
    torch.testing.assert_close(published.l1, torch.full((8,), budget, dtype=torch.float64))


@pytest.mark.parametrize("classes", [3, 5, 10])
def test_the_l1_search_takes_the_strongest_vertex_step_when_every_vertex_is_inside(classes):
    """Off the simplex's faces the largest δᵀF̃δ at ||δ||_1 = b is a vertex (b/2)(e_j - e_k)."""
    reverse = OutputDependentFisher(random_psd(classes, classes + 1))
    logits = random_logits(classes + 2, n=8, classes=classes, scale=0.3)
    logits[:, 0] += 0.8
    budget = 0.02
    published = FisherPoisoning(identity, budget, reverse=reverse).publish(logits)
    eigen = FisherPoisoning(identity, budget, reverse=reverse, search="eigenvector").publish(logits)
    p = published.true_probs
    for row in range(8):
        fisher = reverse.output_fisher(p[row : row + 1])[0]
        best, best_form = None, -1.0
        for j in range(classes):
            for k in range(classes):
                if j == k:
                    continue
                step = torch.zeros(classes, dtype=torch.float64)
                step[j], step[k] = budget / 2, -budget / 2
                moved = p[row] + step
                top = int(p[row].argmax())
                gap = moved[top] - torch.cat([moved[:top], moved[top + 1 :]]).max()
                if bool((moved < 0).any()) or int(moved.argmax()) != top or float(gap) < 1e-3:
                    continue
                form = float(step @ fisher @ step)
                if form > best_form:
                    best, best_form = step, form
        assert best is not None
        got = published.probs[row] - p[row]
        # the form is even in δ: the best vertex step is defined up to its sign
        assert float(got @ fisher @ got) == pytest.approx(best_form, rel=1e-9)
        assert min(float((got - best).abs().max()), float((got + best).abs().max())) < 1e-10
        eigen_step = eigen.probs[row] - p[row]
        assert best_form >= float(eigen_step @ fisher @ eigen_step) - 1e-15
    torch.testing.assert_close(published.l1, torch.full((8,), budget, dtype=torch.float64))


def test_the_l1_search_goes_at_least_as_far_as_the_eigenvector_when_the_budget_is_too_big():
    """Where no candidate can spend the budget, the furthest class-keeping step is taken."""
    reverse = OutputDependentFisher(random_psd(5, 7))
    logits = random_logits(8, n=16, classes=5, scale=1.0)
    budget = 1.5  # more than any of these outputs can move with its class kept
    strongest = FisherPoisoning(identity, budget, reverse=reverse).publish(logits)
    eigen = FisherPoisoning(identity, budget, reverse=reverse, search="eigenvector").publish(logits)
    assert bool((strongest.l1 < budget - 1e-6).all())
    assert bool((strongest.l1 >= eigen.l1 - 1e-12).all())
    assert bool((strongest.l1 > eigen.l1 + 1e-3).any())
    torch.testing.assert_close(strongest.probs.argmax(1), strongest.true_probs.argmax(1))


def test_fisher_poisoning_keeps_a_degenerate_fisher_sum_zero():
    # F̃ = 11ᵀ has no sum-zero component at all: any sum-zero direction is a top one.
    reverse = FixedFisher(torch.ones(4, 4, dtype=torch.float64))
    published = FisherPoisoning(identity, 0.1, reverse=reverse).publish(random_logits(0, 3, 4))
    torch.testing.assert_close(
        published.probs.sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(published.l1, torch.full((3,), 0.1, dtype=torch.float64))


def test_a_deep_rbm_victim_gets_its_generation_pass_as_the_reverse_model():
    from vulnscope.cloning.generation_fisher import GenerationPassFisher

    net = DeepRBM([6, 4, 4], num_classes=3, seed=0)
    defence = FisherPoisoning(net, 0.1, seed=5)
    assert isinstance(defence.reverse, GenerationPassFisher)
    assert isinstance(defence.reverse, ReverseModel)
    x = (torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    published = defence.publish(x)
    assert torch.equal(published.probs.argmax(-1), published.true_probs.argmax(-1))
    assert defence.describe()["parameters"]["reverse"] == "GenerationPassFisher"


# ---------------------------------------------------------------- MAD


def explicit_gradients(surrogate: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, D): ∂ log softmax_k / ∂w, one torch.autograd.grad per sample and class."""
    parameters = list(surrogate.parameters())
    rows = []
    for sample in x:
        log_probs = surrogate(sample[None]).log_softmax(-1)[0]
        per_class = [
            torch.cat(
                [
                    g.reshape(-1)
                    for g in torch.autograd.grad(log_probs[k], parameters, retain_graph=True)
                ]
            )
            for k in range(log_probs.shape[0])
        ]
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def brute_force_vertex(
    gradient: torch.Tensor, y: torch.Tensor, budget: float, margin: float
) -> int:
    """MAD-argmax's vertex from explicit unit gradient directions and closed-form steps."""
    classes = y.shape[0]
    c = int(y.argmax())

    def direction(v: torch.Tensor) -> torch.Tensor:
        a = gradient.T @ v
        return a / a.norm()

    target = direction(y)
    scores, feasible = [], []
    eye = torch.eye(classes, dtype=torch.float64)
    for k in range(classes):
        scores.append(float((direction(eye[k]) - target).square().sum()))
        alpha = budget / float((eye[k] - y).abs().sum())
        q = y + alpha * (eye[k] - y)
        others = torch.cat([q[:c], q[c + 1 :]])
        required = min(margin, float(y[c] - torch.cat([y[:c], y[c + 1 :]]).max()))
        feasible.append(
            alpha <= 1 and int(q.argmax()) == c and float(q[c] - others.max()) >= required
        )
    candidates = [k for k in range(classes) if feasible[k]] or list(range(classes))
    return max(candidates, key=lambda k: scores[k])


@pytest.mark.parametrize("budget", [0.05, 0.4, 1.0])
def test_mad_picks_the_vertex_of_largest_angular_deviation(budget):
    victim = tiny_classifier(0, (5,), 4)
    surrogate = tiny_classifier(1, (5,), 4)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    published = MAD(victim, budget, surrogate=surrogate, margin=1e-3).publish(x)
    gradients = explicit_gradients(surrogate, x)
    feasible_somewhere = 0
    for row in range(40):
        y = published.true_probs[row]
        k = brute_force_vertex(gradients[row], y, budget, 1e-3)
        step = published.probs[row] - y
        assert int(step.argmax()) == k
        alpha = float(step[k] / (1 - y[k]))
        torch.testing.assert_close(step, alpha * (torch.eye(4, dtype=torch.float64)[k] - y))
        if abs(float(published.l1[row]) - budget) < 1e-9:
            feasible_somewhere += 1
    assert feasible_somewhere > 0


def test_mad_takes_the_best_feasible_vertex_over_a_better_infeasible_one():
    # At an L1 of 0.3 some vertices would take an output past its runner-up class.
    victim = tiny_classifier(0, (5,), 3)
    surrogate = tiny_classifier(3, (5,), 3)
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    defence = MAD(victim, 0.3, surrogate=surrogate, margin=1e-3)
    published = defence.publish(x)
    gradients = explicit_gradients(surrogate, x)
    switched = 0
    for row in range(30):
        y = published.true_probs[row]
        k = brute_force_vertex(gradients[row], y, 0.3, 1e-3)
        assert int((published.probs[row] - y).argmax()) == k
        unconstrained = brute_force_vertex(gradients[row], y, 1e-9, 0.0)
        switched += k != unconstrained
    assert switched > 0


def test_the_default_surrogate_is_an_untrained_reproducible_copy():
    victim = tiny_classifier(0, (5,), 4)
    before = [p.clone() for p in victim.parameters()]
    first, second = untrained_copy(victim, 1), untrained_copy(victim, 1)
    other = untrained_copy(victim, 2)
    for a, b, c, v in zip(
        first.parameters(), second.parameters(), other.parameters(), before, strict=True
    ):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert not torch.equal(a, v)
    assert all(torch.equal(p, v) for p, v in zip(victim.parameters(), before, strict=True))
    assert MAD(victim, 0.1, seed=1).surrogate is not victim


# ---------------------------------------------------------------- ReverseSigmoid


def numpy_reverse_sigmoid(y: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    logit = np.log(y) - np.log1p(-y)
    shifted = y - beta * (1.0 / (1.0 + np.exp(-gamma * logit)) - 0.5)
    shifted = np.maximum(shifted, 0.0)
    return shifted / shifted.sum(-1, keepdims=True)


@given(
    arrays(np.float64, (6, 4), elements=st.floats(-6, 6)),
    st.floats(0, 5),
    st.floats(0.1, 4),
)
def test_reverse_sigmoid_matches_the_formula(logits, beta, gamma):
    published = ReverseSigmoid(identity, beta=beta, gamma=gamma)(torch.from_numpy(logits))
    y = torch.softmax(torch.from_numpy(logits), -1).numpy()
    np.testing.assert_allclose(published.numpy(), numpy_reverse_sigmoid(y, beta, gamma), atol=1e-12)


def test_reverse_sigmoid_can_change_the_arg_max():
    defence = ReverseSigmoid(identity, beta=2.0, gamma=1.0)
    assert not defence.preserves_argmax
    # γ = 1: ŷ ∝ (1 - β) y + β/2, which reverses the order of y once β > 1.
    logits = torch.log(torch.tensor([[0.55, 0.45]], dtype=torch.float64))
    torch.testing.assert_close(defence(logits), torch.tensor([[0.45, 0.55]], dtype=torch.float64))


def test_reverse_sigmoid_calibration_spends_the_budget_on_average():
    calibration = random_logits(5, n=50, classes=5)
    defence = ReverseSigmoid(identity, gamma=0.7, budget=0.3, calibration=calibration)
    assert defence.beta is None and defence.beta_ > 0
    assert float(defence.publish(calibration).l1.mean()) == pytest.approx(0.3, abs=1e-9)
    record = defence.describe()
    assert record["budget"] == 0.3 and record["parameters"]["beta_"] == defence.beta_


def test_reverse_sigmoid_calibration_refuses_an_unreachable_budget():
    uniform = torch.zeros(10, 4, dtype=torch.float64)  # every output stays uniform
    with pytest.raises(
        InvalidArgumentError, match=r"budget 0\.1 cannot be reached: .* levels off at 0"
    ):
        ReverseSigmoid(identity, budget=0.1, calibration=uniform)


# ---------------------------------------------------------------- Rounding and LabelOnly


@given(arrays(np.float64, (5, 4), elements=st.floats(-8, 8)), st.integers(0, 4))
def test_rounding_sums_to_one_in_units_and_stays_close(logits, decimals):
    p = torch.softmax(torch.from_numpy(logits), -1)
    q = Rounding(identity, decimals=decimals)(torch.from_numpy(logits))
    units = q * 10**decimals
    torch.testing.assert_close(units, units.round(), atol=1e-9, rtol=0)
    assert torch.equal(
        units.round().sum(-1), torch.full((5,), float(10**decimals), dtype=torch.float64)
    )
    torch.testing.assert_close(q.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool(((q - p).abs() < 10.0**-decimals + 1e-12).all())
    assert bool(((q - p).abs().sum(-1) <= 10.0**-decimals * 4 / 2 + 1e-12).all())


@given(arrays(np.float64, (3,), elements=st.floats(0.01, 1)))
def test_largest_remainder_rounding_is_the_closest_rounding_that_sums_to_one(weights):
    p = torch.from_numpy(weights / weights.sum())[None]
    q = round_probabilities(p, 1)[0].numpy()
    best = min(
        np.abs(np.array(units) / 10 - p[0].numpy()).sum()
        for units in itertools.product(range(11), repeat=3)
        if sum(units) == 10
    )
    assert np.abs(q - p[0].numpy()).sum() == pytest.approx(best, abs=1e-12)


def test_rounding_can_tie_the_two_top_classes():
    defence = Rounding(identity, decimals=2)
    assert not defence.preserves_argmax
    logits = torch.log(torch.tensor([[0.4998, 0.5002]], dtype=torch.float64))
    published = defence(logits)
    assert published.tolist() == [[0.5, 0.5]]
    assert int(published.argmax()) == 0  # the true class is 1


def test_label_only_publishes_the_one_hot_of_the_arg_max():
    logits = random_logits(0)
    published = LabelOnly(identity).publish(logits)
    assert torch.equal(published.probs, torch.eye(5, dtype=torch.float64)[logits.argmax(-1)])
    assert LabelOnly.preserves_argmax and LabelOnly(identity).budget is None


# ---------------------------------------------------------------- seeds


def test_same_seed_same_answer_other_seed_other_answer():
    x = random_logits(0)
    first = RandomPoisoning(identity, 0.2, seed=4)(x)
    assert torch.equal(first, RandomPoisoning(identity, 0.2, seed=4)(x))
    assert not torch.equal(first, RandomPoisoning(identity, 0.2, seed=5)(x))


def test_without_a_seed_a_defence_is_still_consistent_but_unpredictable():
    x = random_logits(0)
    defence = RandomPoisoning(identity, 0.2, seed=None)
    assert torch.equal(defence(x), defence(x))
    assert not torch.equal(defence(x), RandomPoisoning(identity, 0.2, seed=None)(x))
    assert defence.describe()["parameters"]["seed"] is None


def test_row_seeds_depend_on_the_seed_and_the_row_only():
    x = random_logits(0, n=6)
    seeds = row_seeds(x, 1)
    assert len(set(seeds)) == 6 and all(0 <= s < 2**63 for s in seeds)
    assert row_seeds(x[[4, 2]], 1) == [seeds[4], seeds[2]]
    assert row_seeds(x, 2) != seeds
    assert row_seeds(x.float(), 1) != seeds
    assert row_seeds(x, None) != row_seeds(x, None)
    assert row_seeds(x[:0], 1) == []
    draws = [torch.rand(1, generator=g) for g in row_generators(x, 1)]
    assert [float(d) for d in draws] == [
        float(torch.rand(1, generator=g)) for g in row_generators(x, 1)
    ]


# ---------------------------------------------------------------- bad input


def test_fisher_poisoning_without_a_reverse_model_on_an_ordinary_classifier():
    with pytest.raises(
        InvalidArgumentError,
        match=r"reverse is required unless the model is a vulnscope\.rbm\.DeepRBM .* "
        r"pass reverse=ConditionalDecoder\.fit\(\.\.\.\) from vulnscope\.cloning\.decoder",
    ):
        FisherPoisoning(nn.Linear(4, 3), 0.1)


def test_fisher_poisoning_with_a_reverse_model_for_other_classes():
    net = DeepRBM([6, 4, 4], num_classes=3, seed=0)
    with pytest.raises(
        InvalidArgumentError, match=r"reverse\.num_classes must match the model's 3 classes, got 4"
    ):
        FisherPoisoning(net, 0.1, reverse=FixedFisher(random_psd(4, 0)))
    defence = FisherPoisoning(identity, 0.1, reverse=FixedFisher(random_psd(4, 0)))
    with pytest.raises(
        InvalidArgumentError, match=r"reverse\.num_classes must match the model's 5 classes, got 4"
    ):
        defence(random_logits(0))


def test_fisher_poisoning_with_a_broken_reverse_model():
    with pytest.raises(
        InvalidTypeError, match=r"reverse must be a vulnscope\.cloning\.reverse\.ReverseModel"
    ):
        FisherPoisoning(identity, 0.1, reverse="decoder")

    class Wrong(FixedFisher):
        def output_fisher(self, probs):
            return torch.zeros(probs.shape[0], 2, 2)

    with pytest.raises(
        ModelError, match=r"reverse\.output_fisher must return a tensor of shape \(12, 5, 5\)"
    ):
        FisherPoisoning(identity, 0.1, reverse=Wrong(random_psd(5, 0)))(random_logits(0))

    class Infinite(FixedFisher):
        def output_fisher(self, probs):
            return torch.full((probs.shape[0], 5, 5), math.inf)

    with pytest.raises(ModelError, match="NaN or infinite"):
        FisherPoisoning(identity, 0.1, reverse=Infinite(random_psd(5, 0)))(random_logits(0))


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [
        (
            1.9,
            InvalidArgumentError,
            r"budget must be < 1\.8 for 10 classes: two probability vectors with the same arg-max",
        ),
        (0.0, InvalidArgumentError, r"budget must be > 0\.0, got 0\.0"),
        (-1.0, InvalidArgumentError, r"budget must be > 0\.0, got -1\.0"),
        (math.nan, InvalidArgumentError, "budget must be finite, got nan"),
        ("0.1", InvalidTypeError, "budget must be a real number, got '0.1'"),
        (None, InvalidTypeError, "budget must be a real number, got None"),
    ],
)
def test_budgets_are_checked_against_the_number_of_classes(budget, error, message):
    reverse = FixedFisher(random_psd(10, 0))
    with pytest.raises(error, match=message):
        FisherPoisoning(identity, budget, reverse=reverse)
    # Without a num_classes on the model the bound is checked when it is known.
    x = random_logits(0, classes=10)
    with pytest.raises(error, match=message):
        RandomPoisoning(identity, budget)(x)
    with pytest.raises(error, match=message):
        MAD(identity, budget, surrogate=linear_surrogate(10, 10))(x)


def test_budgets_of_two_or_more_are_refused_before_the_model_is_known():
    with pytest.raises(
        InvalidArgumentError, match=r"budget must be < 2\(1 - 1/C\) for C classes .* got 2\.5"
    ):
        RandomPoisoning(identity, 2.5)
    net = DeepRBM([6, 4], num_classes=3, seed=0)
    with pytest.raises(InvalidArgumentError, match=r"budget must be < 1\.33333 for 3 classes"):
        MAD(net, 1.5, surrogate=linear_surrogate(6, 3))


def test_defences_check_the_model_and_the_queries():
    with pytest.raises(
        InvalidTypeError, match=r"model must be a callable such as a torch\.nn\.Module, got 3"
    ):
        Undefended(3)
    with pytest.raises(
        InvalidTypeError, match=r"x must be a torch\.Tensor, got \[\[1\.0, 2\.0\]\]"
    ):
        Undefended(identity)([[1.0, 2.0]])
    with pytest.raises(InvalidArgumentError, match="x must be finite"):
        Undefended(identity)(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ModelError, match=r"model must return logits of shape \(N, C\)"):
        Undefended(lambda x: x[:, 0])(torch.zeros(2, 3))
    with pytest.raises(InvalidArgumentError, match=r"margin must be >= 0\.0, got -0\.1"):
        RandomPoisoning(identity, 0.1, margin=-0.1)
    with pytest.raises(InvalidTypeError, match="seed must be an integer"):
        RandomPoisoning(identity, 0.1, seed="0")


def test_mad_checks_its_surrogate():
    with pytest.raises(InvalidTypeError, match=r"surrogate must be a torch\.nn\.Module, got 'net'"):
        MAD(nn.Linear(3, 2), 0.1, surrogate="net")
    with pytest.raises(
        InvalidArgumentError, match=r"surrogate is required when model is not a torch\.nn\.Module"
    ):
        MAD(identity, 0.1)
    with pytest.raises(
        InvalidArgumentError,
        match=r"surrogate is required: none of the modules of DeepRBM has reset_parameters\(\)",
    ):
        MAD(DeepRBM([6, 4], num_classes=3, seed=0), 0.1)
    with pytest.raises(
        ModelError, match="surrogate must return 5 logits per sample like the model, returned 3"
    ):
        MAD(identity, 0.1, surrogate=linear_surrogate(5, 3))(random_logits(0))
    with pytest.raises(InvalidArgumentError, match="batch_size must be an integer >= 1, got 0"):
        MAD(identity, 0.1, surrogate=linear_surrogate(5, 5), batch_size=0)
    with pytest.raises(InvalidTypeError, match="vectorize must be True or False, got 'yes'"):
        MAD(identity, 0.1, surrogate=linear_surrogate(5, 5), vectorize="yes")


def test_reverse_sigmoid_checks_its_arguments():
    calibration = random_logits(0)
    with pytest.raises(InvalidArgumentError, match="beta and budget/calibration are alternatives"):
        ReverseSigmoid(identity, beta=0.1, budget=0.1, calibration=calibration)
    with pytest.raises(
        InvalidArgumentError, match="ReverseSigmoid needs beta, or budget and calibration"
    ):
        ReverseSigmoid(identity)
    with pytest.raises(
        InvalidArgumentError, match="ReverseSigmoid needs beta, or budget and calibration"
    ):
        ReverseSigmoid(identity, budget=0.1)
    with pytest.raises(
        InvalidTypeError, match=r"calibration must be a torch\.Tensor of inputs, got"
    ):
        ReverseSigmoid(identity, budget=0.1, calibration=[[0.0, 1.0]])
    with pytest.raises(InvalidArgumentError, match=r"gamma must be > 0\.0, got 0\.0"):
        ReverseSigmoid(identity, beta=0.1, gamma=0.0)
    with pytest.raises(InvalidArgumentError, match=r"beta must be >= 0\.0, got -1\.0"):
        ReverseSigmoid(identity, beta=-1.0)
    with pytest.raises(InvalidArgumentError, match=r"budget must be < 1\.6 for 5 classes"):
        ReverseSigmoid(identity, budget=1.7, calibration=calibration)


def test_rounding_checks_its_decimals():
    with pytest.raises(
        InvalidArgumentError, match=r"decimals must be at most 12 \(float64 precision\), got 13"
    ):
        Rounding(identity, decimals=13)
    with pytest.raises(InvalidArgumentError, match="decimals must be an integer >= 0, got -1"):
        Rounding(identity, decimals=-1)
    with pytest.raises(InvalidTypeError, match="decimals must be an integer, got True"):
        Rounding(identity, decimals=True)


@pytest.mark.parametrize("vectorize", [True, False])
def test_the_gram_of_the_log_probability_gradients_matches_autograd(vectorize):
    surrogate = tiny_classifier(1, (1, 2, 3), 4)
    x = torch.randn(7, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gradients = explicit_gradients(surrogate, x)
    gram = log_prob_gram(surrogate, x, batch_size=3, vectorize=vectorize)
    torch.testing.assert_close(gram, gradients @ gradients.transpose(1, 2), atol=1e-12, rtol=1e-12)
