from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import PGD, DeepFool, FisherAttack
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.evaluate import (
    MinimalPerturbations,
    minimal_perturbations,
    plot_minimal_perturbations,
)

SHAPE = (1, 2, 3)
N = 30


def _problem(seed=0):
    model = tiny_classifier(seed, SHAPE, classes=4)
    x = random_inputs(seed, N, SHAPE, (0.0, 1.0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 4  # four clean mistakes
    return model, x, y


def test_each_point_keeps_the_smallest_perturbation_of_the_attacks():
    model, x, y = _problem()
    attacks = [FisherAttack(minimal=True, search_steps=6, refine=3), DeepFool(steps=20)]
    result = minimal_perturbations(model, x, y, attacks=attacks)
    assert result.attacks == ("FisherAttack", "DeepFool") and result.norm == "l2"
    # each attack on its own, on the points the model gets right
    separately = [attack(model, x[4:], y[4:]) for attack in attacks]
    sizes = torch.stack(
        [torch.where(r.success, r.norms.double(), math.inf) for r in separately]
    )  # (2, N - 4)
    smallest, which = sizes.min(dim=0)
    torch.testing.assert_close(result.norms[4:], smallest)
    assert 0 < int((which == 0).sum()) < N - 4  # both attacks win somewhere: a real test
    for i, (size, winner) in enumerate(zip(smallest.tolist(), which.tolist(), strict=True)):
        expected = attacks[winner] if math.isfinite(size) else None
        name = None if expected is None else type(expected).__name__
        assert result.found_by[4 + i] == name
        if expected is not None:
            torch.testing.assert_close(result.x_adv[4 + i], separately[winner].x_adv[i])
    # the clean mistakes are marked, need no perturbation, and are left out of the statistics
    assert result.found_by[:4] == ("clean",) * 4 and not result.clean_correct[:4].any()
    assert torch.equal(result.norms[:4], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(result.x_adv[:4], x[:4]) and result.n_clean_correct == N - 4


def test_statistics_agree_with_numpy_over_the_clean_correct_points():
    model, x, y = _problem(seed=1)
    wide = DeepFool(steps=50, bounds=(-10.0, 10.0))  # no box in the way: every point breaks
    result = minimal_perturbations(model, x, y, attacks=wide)
    values = result.norms[result.clean_correct].numpy()
    assert np.isfinite(values).all() and result.n_not_found == 0
    assert result.median == pytest.approx(np.median(values))
    qs = [0.0, 0.1, 0.33, 0.5, 0.9, 1.0]
    np.testing.assert_allclose(result.quantiles(qs), np.quantile(values, qs))
    for bins in (5, [0.0, 0.1, 0.2, 0.5, 2.0]):
        counts, edges = result.histogram(bins)
        expected_counts, expected_edges = np.histogram(values, bins=bins)
        np.testing.assert_array_equal(counts, expected_counts)
        np.testing.assert_allclose(edges, expected_edges)


def test_points_no_attack_breaks_count_as_infinitely_far():
    model, x, y = _problem(seed=2)
    capped = DeepFool(steps=20, eps=0.15)
    result = minimal_perturbations(model, x, y, attacks=capped)
    correct = result.norms[result.clean_correct]
    missing = torch.isinf(correct)
    assert 0 < int(missing.sum()) < correct.numel() and result.n_not_found == int(missing.sum())
    assert all(name is None for name, m in zip(result.found_by[4:], missing, strict=True) if m)
    assert (correct[~missing] <= 0.15 + 1e-9).all()
    # quantiles: numpy's rule on the sorted values, with inf above everything found
    values = np.sort(correct.numpy())
    finite = values[np.isfinite(values)]
    low_q = 0.5 * (finite.size - 1) / (values.size - 1)  # between finite values only
    assert result.quantiles([low_q])[0] == pytest.approx(np.quantile(finite, 0.5))
    assert result.quantiles([1.0])[0] == math.inf
    counts, _ = result.histogram(4)
    assert counts.sum() == finite.size


def test_batches_give_the_same_result():
    model, x, y = _problem(seed=3)
    whole = minimal_perturbations(model, x, y, attacks=DeepFool(steps=20))
    batched = minimal_perturbations(model, x, y, attacks=DeepFool(steps=20), batch_size=7)
    torch.testing.assert_close(batched.norms, whole.norms)
    assert batched.found_by == whole.found_by


def test_default_is_deepfool_in_the_norm_and_to_dict_is_json_ready():
    model, x, y = _problem(seed=4)
    result = minimal_perturbations(model, x, y, norm="linf")
    assert result.attacks == ("DeepFool",) and result.norm == "linf"
    record = result.to_dict()
    json.dumps(record, allow_nan=False)
    assert record["n"] == N and record["n_clean_correct"] == N - 4
    assert record["median"] == pytest.approx(result.median)
    assert record["found_by"]["clean"] == 4
    assert sum(record["histogram"]["counts"]) == N - 4 - result.n_not_found
    # nothing classified correctly: no statistics, still JSON-ready
    wrong = minimal_perturbations(model, x, (model(x).argmax(1) + 1) % 4, norm="linf")
    assert math.isnan(wrong.median) and wrong.n_clean_correct == 0
    record = wrong.to_dict()
    assert record["median"] is None and record["histogram"]["counts"] == []
    json.dumps(record, allow_nan=False)


def test_two_copies_of_one_attack_get_distinct_names():
    model, x, y = _problem(seed=5)
    result = minimal_perturbations(model, x, y, attacks=[DeepFool(steps=20), DeepFool(steps=2)])
    assert result.attacks == ("DeepFool[0]", "DeepFool[1]")
    assert set(result.found_by) <= {"DeepFool[0]", "DeepFool[1]", "clean", None}


def test_the_plot_is_written(tmp_path):
    model, x, y = _problem(seed=6)
    result = minimal_perturbations(model, x, y, attacks=DeepFool(steps=20))
    path = plot_minimal_perturbations(result, tmp_path / "minimal.png", bins=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attacks": []}, InvalidTypeError, "attacks must be an Attack or a non-empty sequence"),
        ({"attacks": ["deepfool"]}, InvalidTypeError, r"attacks\[0\] must be a vulnscope Attack"),
        ({"attacks": PGD(eps=0.1)}, InvalidArgumentError, r"attacks\[0\] must be a minimal"),
        (
            {"attacks": [DeepFool(), DeepFool(targeted=True)]},
            InvalidArgumentError,
            r"attacks\[1\] must be untargeted",
        ),
        (
            {"attacks": DeepFool(norm="linf")},
            InvalidArgumentError,
            r"attacks\[0\] must minimise the 'l2' norm",
        ),
        ({"norm": "l0"}, InvalidArgumentError, "norm must be one of"),
        ({"batch_size": 0}, InvalidArgumentError, "batch_size must be an integer >= 1"),
    ],
)
def test_minimal_perturbations_refuses_bad_arguments(kwargs, error, message):
    model, x, y = _problem()
    with pytest.raises(error, match=message):
        minimal_perturbations(model, x, y, **kwargs)


def test_quantiles_must_lie_in_the_unit_interval():
    model, x, y = _problem()
    result = minimal_perturbations(model, x, y, attacks=DeepFool(steps=5))
    assert isinstance(result, MinimalPerturbations)
    with pytest.raises(InvalidArgumentError, match=r"qs must lie in \[0, 1\]"):
        result.quantiles([0.5, 1.2])
