from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import PGD
from vulnscope.cloning.extraction import CloneMeasurement, extract, measure_clone
from vulnscope.cloning.oracle import BlackBox, QueryBudgetExceededError
from vulnscope.errors import InvalidArgumentError, InvalidTypeError, ModelError
from vulnscope.models import DigitsCNN

FEATURES, CLASSES = 16, 4


def _linear_victim() -> nn.Linear:
    """softmax(W x + b) with W, b drawn under a fixed seed, scaled to confident outputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        truth = nn.Linear(FEATURES, CLASSES).double()
    with torch.no_grad():
        truth.weight.mul_(8.0)
        truth.bias.mul_(2.0)
    return truth


def _softmax_of(model: nn.Module):
    return lambda x: torch.softmax(model(x), dim=1)


def _lbfgs(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, seed: int) -> nn.Module:
    """Full-batch L-BFGS on the soft cross-entropy: a convex problem for a linear clone."""
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        max_iter=200,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = -(targets * torch.log_softmax(model(x), dim=1)).sum(dim=1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def _differences(logits: torch.Tensor) -> torch.Tensor:
    """z_j - z_0: logits up to the softmax's gauge (adding a constant to every class)."""
    return logits[:, 1:] - logits[:, :1]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_a_linear_model_is_recovered_from_its_probabilities_as_by_equation_solving():
    truth = _linear_victim()
    generator = torch.Generator().manual_seed(1)
    queries = torch.rand(300, FEATURES, generator=generator, dtype=torch.float64)
    fresh = torch.rand(1000, FEATURES, generator=generator, dtype=torch.float64)
    result = extract(
        _softmax_of(truth),
        queries,
        lambda: nn.Linear(FEATURES, CLASSES).double(),
        trainer=_lbfgs,
    )
    assert result.queries_used == 300 and not result.clone.training
    # Tramèr et al. (2016): log p_j - log p_0 = (W_j - W_0) x + (b_j - b_0), solved exactly
    design = torch.cat([result.query_inputs, torch.ones(300, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, _differences(result.query_outputs.log())).solution
    with torch.no_grad():
        clone = _differences(result.clone(fresh))
        true = _differences(truth(fresh))
    solved = torch.cat([fresh, torch.ones(1000, 1, dtype=torch.float64)], dim=1) @ solution
    assert _relative(solved, true) < 1e-8
    assert _relative(clone, solved) < 1e-2
    assert _relative(clone, true) < 1e-2
    assert bool((clone.argmax(1) == true.argmax(1)).all())
    assert torch.equal(result.clone(fresh).argmax(1), truth(fresh).argmax(1))


def test_the_default_trainer_approximately_recovers_a_linear_model():
    truth = _linear_victim()
    generator = torch.Generator().manual_seed(1)
    queries = torch.rand(300, FEATURES, generator=generator, dtype=torch.float64)
    fresh = torch.rand(1000, FEATURES, generator=generator, dtype=torch.float64)
    clone = extract(
        _softmax_of(truth),
        queries,
        lambda: nn.Linear(FEATURES, CLASSES).double(),
        epochs=200,
        lr=1e-2,
    ).clone
    with torch.no_grad():
        assert _relative(_differences(clone(fresh)), _differences(truth(fresh))) < 0.1
        agreement = (clone(fresh).argmax(1) == truth(fresh).argmax(1)).double().mean()
    assert agreement >= 0.99


def test_a_digits_cnn_is_cloned_from_its_outputs_on_the_training_split(digits_cnn, digits_test):
    from vulnscope.data import load_digits

    train = load_digits("train")
    # seed 1: not the victim's own initialisation (pretrained uses seed 0)
    result = extract(
        _softmax_of(digits_cnn),
        train.x,
        DigitsCNN,
        epochs=6,
        seed=1,
        test=(digits_test.x, digits_test.y),
        transfer_eps=0.2,
        transfer_steps=10,
    )
    measurement = result.measurement
    assert measurement is not None
    assert result.queries_used == 1400 and result.labels_only is False
    assert measurement.agreement >= 0.9 and measurement.accuracy >= 0.9
    assert measurement.n_test == 397 and measurement.n_attacked >= 380
    # crafted on the clone, most adversarial examples at Linf 0.2 also fool the victim
    assert measurement.transfer_rate >= 0.5


def test_the_clone_follows_the_seed():
    victim = _softmax_of(tiny_classifier(0, (1, 2, 3), 4))
    queries = random_inputs(1, 40, (1, 2, 3), (0.0, 1.0))

    def run(seed):
        return extract(
            victim,
            queries,
            lambda: tiny_classifier(9, (1, 2, 3), 4),
            epochs=2,
            query_budget=30,
            seed=seed,
        )

    def architecture():
        return nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()

    first, second, other = run(3), run(3), run(4)
    for a, b in zip(first.clone.parameters(), second.clone.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.query_inputs, second.query_inputs)
    assert not torch.equal(first.query_inputs, other.query_inputs)
    # the architecture's own initialisation follows the seed too
    one = extract(victim, queries, architecture, epochs=1, seed=5).clone
    two = extract(victim, queries, architecture, epochs=1, seed=5).clone
    three = extract(victim, queries, architecture, epochs=1, seed=6).clone
    assert torch.equal(one[1].weight, two[1].weight)
    assert not torch.equal(one[1].weight, three[1].weight)


def test_a_budget_smaller_than_the_queries_takes_a_seeded_subset():
    victim = _softmax_of(tiny_classifier(0, (1, 2, 3), 4))
    queries = random_inputs(1, 50, (1, 2, 3), (0.0, 1.0))
    result = extract(
        victim, queries, lambda: tiny_classifier(9, (1, 2, 3), 4), epochs=1, query_budget=20
    )
    assert result.queries_used == 20 and result.query_inputs.shape[0] == 20
    matches = (result.query_inputs[:, None] == queries[None]).flatten(2).all(dim=2)
    rows = matches.float().argmax(dim=1)
    assert bool((matches.sum(dim=1) == 1).all()) and bool((rows.diff() > 0).all())
    torch.testing.assert_close(result.query_outputs, victim(result.query_inputs).detach())


def test_a_module_architecture_is_copied_and_a_black_box_keeps_its_own_count():
    victim = _softmax_of(tiny_classifier(0, (1, 2, 3), 4))
    queries = random_inputs(1, 12, (1, 2, 3), (0.0, 1.0))
    initial = tiny_classifier(9, (1, 2, 3), 4)
    before = [p.clone() for p in initial.parameters()]
    box = BlackBox(victim, max_queries=20)
    box(queries[:5])
    result = extract(box, queries, initial, query_budget=100, epochs=1)
    assert result.queries_used == 12 and box.queries_used == 17
    assert all(torch.equal(a, b) for a, b in zip(before, initial.parameters(), strict=True))
    assert result.clone is not initial
    # the box's 3 queries left bound this extraction below its own query_budget
    assert extract(box, queries, initial, epochs=1, query_budget=12).queries_used == 3
    assert box.queries_used == 20
    with pytest.raises(QueryBudgetExceededError, match="the victim's query budget is spent"):
        extract(box, queries, initial, epochs=1)


def test_a_label_only_victim_gives_one_hot_targets():
    teacher = tiny_classifier(0, (1, 2, 3), 4)
    queries = random_inputs(1, 12, (1, 2, 3), (0.0, 1.0))
    box = BlackBox(lambda x: teacher(x).argmax(dim=1), num_classes=4)
    result = extract(
        box,
        queries,
        lambda: tiny_classifier(9, (1, 2, 3), 4),
        epochs=1,
        test=(queries, teacher(queries).argmax(1)),
    )
    assert result.labels_only is True
    expected = torch.eye(4, dtype=torch.float64)[teacher(queries).argmax(dim=1)]
    torch.testing.assert_close(result.query_outputs, expected, rtol=0, atol=0)
    assert result.measurement is not None and result.measurement.reference_accuracy == 1.0
    assert result.queries_used == box.queries_used == 12  # the measurement is not counted


class _Counting:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x):
        self.calls += 1
        return torch.softmax(self.model(x), dim=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"query_budget": 0}, InvalidArgumentError, "query_budget must be an integer >= 1, got 0"),
        ({"query_budget": -5}, InvalidArgumentError, "query_budget must be an integer >= 1"),
        ({"augmentation": "mixup"}, InvalidArgumentError, "augmentation must be one of"),
        ({"augmentation_step": 0.0}, InvalidArgumentError, "augmentation_step must be > 0"),
        ({"rounds": 0}, InvalidArgumentError, "rounds must be an integer >= 1"),
        ({"epochs": 0}, InvalidArgumentError, "epochs must be an integer >= 1"),
        ({"lr": 0.0}, InvalidArgumentError, "lr must be > 0"),
        ({"trainer": 3}, InvalidTypeError, "trainer must be a callable"),
        ({"seed": -1}, InvalidArgumentError, "seed must be an integer >= 0"),
        ({"test": (1, 2, 3)}, InvalidTypeError, "test must be a pair"),
        ({"transfer_norm": "l3"}, InvalidArgumentError, "transfer_norm must be one of"),
        ({"transfer_eps": -0.1}, InvalidArgumentError, "transfer_eps must be >= 0"),
        ({"reference": 3}, InvalidTypeError, "reference must be a callable"),
        ({"bounds": (0.0, 0.5)}, InvalidArgumentError, "queries must lie inside bounds"),
        ({"architecture": 3}, InvalidTypeError, "architecture must be a torch.nn.Module or"),
        ({"architecture": lambda: 3}, InvalidTypeError, "architecture must return a torch.nn"),
        (
            {"architecture": lambda: tiny_classifier(1, (1, 2, 3), 4).float()},
            InvalidTypeError,
            "architecture's parameters are torch.float32",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_query(kwargs, error, message):
    victim = _Counting(tiny_classifier(0, (1, 2, 3), 4))
    arguments = {"architecture": lambda: tiny_classifier(9, (1, 2, 3), 4), "epochs": 1}
    arguments.update(kwargs)
    queries = random_inputs(1, 6, (1, 2, 3), (0.0, 1.0))
    with pytest.raises(error, match=message):
        extract(victim, queries, **arguments)
    assert victim.calls == 0


def test_a_clone_with_the_wrong_number_of_outputs_is_a_model_error():
    victim = _softmax_of(tiny_classifier(0, (1, 2, 3), 4))
    queries = random_inputs(1, 6, (1, 2, 3), (0.0, 1.0))
    with pytest.raises(ModelError, match=r"architecture must output one logit per victim class"):
        extract(victim, queries, lambda: tiny_classifier(9, (1, 2, 3), 3), epochs=1)


def test_a_victim_returning_logits_gets_the_black_box_error():
    victim = tiny_classifier(0, (1, 2, 3), 4)
    queries = random_inputs(1, 6, (1, 2, 3), (0.0, 1.0))
    with pytest.raises(ModelError, match=r"victim must return probability vectors.*Undefended"):
        extract(victim, queries, lambda: tiny_classifier(9, (1, 2, 3), 4), epochs=1)


def test_a_trainer_must_return_a_module():
    victim = _softmax_of(tiny_classifier(0, (1, 2, 3), 4))
    queries = random_inputs(1, 6, (1, 2, 3), (0.0, 1.0))
    with pytest.raises(InvalidTypeError, match=r"trainer must return the trained torch\.nn"):
        extract(
            victim,
            queries,
            lambda: tiny_classifier(9, (1, 2, 3), 4),
            trainer=lambda m, x, t, s: None,
        )


# measure_clone on hand-checkable linear models of two inputs in [0, 1]. The reference
# predicts class 1 exactly when x1 > 0.5; the clone when x0 + x1 > 1. On either, PGD's
# gradient has a fixed sign per coordinate, so 20 steps of 2.5 * 0.1 / 20 from any random
# start end on the corner of the Linf ball: each coordinate moves by exactly eps = 0.1.


def _threshold(weights: tuple[float, float], offset: float) -> nn.Module:
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[1] = 20.0 * torch.tensor(weights)
        model.bias[1] = -20.0 * offset
    return model.eval()


def _reference() -> nn.Module:
    return _threshold((0.0, 1.0), 0.5)


def _clone() -> nn.Module:
    return _threshold((1.0, 1.0), 1.0)


POINTS = torch.tensor(
    [[0.3, 0.2], [0.75, 0.2], [0.5, 0.45], [0.5, 0.55], [0.1, 0.8], [0.9, 0.65]],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])  # the reference's classes


def test_measure_a_clone_against_a_hand_computed_case():
    measured = measure_clone(_clone(), _reference(), POINTS, LABELS, eps=0.1)
    assert measured.reference_accuracy == 1.0 and measured.n_attacked == 6
    # the clone's sums 0.5, 0.95, 0.95, 1.05, 0.9, 1.55: it gets only (0.1, 0.8) wrong
    assert measured.accuracy == measured.agreement == pytest.approx(5 / 6)
    # adversarial points, each coordinate 0.1 towards the clone's other class:
    # (0.4, 0.3) (0.85, 0.3) (0.6, 0.55) (0.4, 0.45) (0.0, 0.7) (0.8, 0.55), with sums
    # 0.7 1.15 1.15 0.85 0.7 1.35: the clone is fooled on all but the first and the last
    # ((0.0, 0.7) was already wrong); the reference changes its mind on the two whose x1
    # crossed 0.5
    assert measured.n_clone_fooled == 4 and measured.clone_attack_success == pytest.approx(4 / 6)
    assert measured.n_transferred == 2 and measured.transfer_rate == pytest.approx(2 / 6)


def test_measure_a_perfect_clone_transfers_exactly_its_own_attack():
    reference = _reference()
    labels = LABELS.clone()
    labels[0] = 1  # the reference gets this one wrong: it is not attacked
    measured = measure_clone(reference, reference, POINTS, labels, eps=0.1, steps=10, seed=3)
    assert measured.agreement == 1.0 and measured.n_attacked == 5
    white_box = PGD(eps=0.1, steps=10, seed=3)(reference, POINTS[1:], labels[1:])
    assert measured.transfer_rate == measured.clone_attack_success
    assert measured.n_transferred == int(white_box.success.sum()) == 2  # x1 = 0.45 and 0.55


def test_measure_accepts_probability_and_label_references_and_is_json_ready():
    reference = _reference()
    by_logits = measure_clone(_clone(), reference, POINTS, LABELS, eps=0.1)
    by_probs = measure_clone(_clone(), _softmax_of(reference), POINTS, LABELS, eps=0.1)
    by_labels = measure_clone(
        _clone(), lambda x: reference(x).argmax(dim=1), POINTS, LABELS, eps=0.1
    )
    assert by_logits == by_probs == by_labels
    # a reference wrong everywhere leaves nothing to attack
    nothing = measure_clone(_clone(), reference, POINTS, 1 - LABELS, eps=0.1)
    assert nothing.n_attacked == 0 and math.isnan(nothing.transfer_rate)
    record = nothing.to_dict()
    assert record["transfer_rate"] is None and record["norm"] == "linf"
    json.dumps(record, allow_nan=False)
    assert set(record) == set(CloneMeasurement.__dataclass_fields__)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eps": -1.0}, InvalidArgumentError, "eps must be >= 0"),
        ({"norm": "l0"}, InvalidArgumentError, "norm must be one of"),
        ({"steps": 0}, InvalidArgumentError, "steps must be an integer >= 1"),
        (
            {"y_test": torch.zeros(5, dtype=torch.int64)},
            InvalidArgumentError,
            r"y_test must .*\(6,\)",
        ),
        ({"x_test": POINTS + 1}, InvalidArgumentError, "x_test must lie inside bounds"),
        ({"reference": lambda x: x[:, 0]}, ModelError, "reference must return logits"),
    ],
)
def test_measure_refuses_bad_arguments(kwargs, error, message):
    arguments = {
        "clone": _clone(),
        "reference": _reference(),
        "x_test": POINTS,
        "y_test": torch.zeros(6, dtype=torch.int64),
        "eps": 0.1,
    }
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        measure_clone(**arguments)
