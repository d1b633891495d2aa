"""The audit's budgets when none are given: conventional, from the model's data, or the fallback.

"Bracket the transition": robust accuracy under an attack the choice never saw (APGD-CE,
20 steps, on points it did not sample) is at least 60% of the clean accuracy at the first
budget and at most 40% at the last. The design aims at 85% and 15% of the correct points
(the quantiles), and rounding moves the first budget down and the last up, so these
thresholds leave room for the sampling noise of 200 points and for APGD being stronger
than DeepFool, and still fail budgets that miss the transition (the digits' L2 budgets on
a 28x28 model: 100% / 96%).
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from vulnscope.attacks import APGD
from vulnscope.audit import (
    CONVENTIONAL_BUDGETS,
    DEFAULT_EPSILONS,
    AuditResult,
    BudgetChoice,
    audit,
    choose_budgets,
    render_report,
    results_schema,
)
from vulnscope.audit.budgets import is_eight_bit, readable_budgets
from vulnscope.data import ImageData
from vulnscope.errors import DataError
from vulnscope.models import train_classifier

CPU = torch.device("cpu")
LADDER = {1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0}


def _on_ladder(value: float) -> bool:
    mantissa = value / 10 ** math.floor(math.log10(value))
    return any(math.isclose(mantissa, m, rel_tol=1e-9) for m in LADDER)


def _unknown(data: ImageData, x: torch.Tensor | None = None) -> ImageData:
    """``data`` under a source that names no known data set."""
    return ImageData(data.x if x is None else x, data.y, data.num_classes, "npz:mine.npz")


def _never_called(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("the model ran, though no budget had to be measured")


def _robust_fraction(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float
) -> float:
    result = APGD(norm=norm, eps=eps, steps=20, seed=0)(model, x, y)
    return float((~result.success).float().mean())


def _check_brackets(model: nn.Module, data: ImageData) -> tuple[BudgetChoice, float]:
    """The budgets chosen on all but the last 100 points bracket the transition on those.

    Returns the choice and the clean accuracy on the last 100 points.
    """
    seen = ImageData(data.x[:-100], data.y[:-100], data.num_classes, data.source)
    choice = choose_budgets(model, seen, None, seed=0, device=CPU, points=100)
    x, y = data.x[-100:], data.y[-100:]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    for norm in ("linf", "l2"):
        chosen = choice[norm]
        assert chosen.how.startswith("from minimal perturbations (DeepFool on 100 points")
        first, last = chosen.epsilons[0], chosen.epsilons[-1]
        assert _robust_fraction(model, x, y, norm, first) >= 0.6 * clean, (norm, chosen)
        assert _robust_fraction(model, x, y, norm, last) <= 0.4 * clean, (norm, chosen)
    return choice, clean


def test_the_budgets_bracket_the_transition_on_the_digits_cnn(digits_cnn, digits_test):
    _check_brackets(digits_cnn, _unknown(digits_test))


def _digits_train(size: int = 8) -> ImageData:
    from vulnscope.data import load_digits

    train = load_digits("train")
    x, y = train.x, train.y
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").clamp(0, 1)
    return ImageData(x, y, 10, "npz:train.npz")


def test_the_budgets_bracket_the_transition_on_an_mlp():
    data = _digits_train()
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_classifier(mlp, data.x[:1000], data.y[:1000], epochs=10, seed=0)
    _check_brackets(mlp, ImageData(data.x[1000:], data.y[1000:], 10, data.source))


def test_the_budgets_bracket_the_transition_on_a_28x28_model_in_multiples_of_1_255():
    data = _digits_train(28)
    x = (data.x * 255).round() / 255  # 8-bit, as an IDX or PNG data set reads
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    train_classifier(cnn, x[:800], data.y[:800], epochs=4, lr=1e-2, seed=0)
    test = ImageData(x[1000:], data.y[1000:], 10, data.source)
    choice, clean = _check_brackets(cnn, test)
    steps = [eps * 255 for eps in choice["linf"].epsilons]
    assert all(abs(step - round(step)) < 1e-9 for step in steps)
    for label, step in zip(choice["linf"].labels, steps, strict=True):  # 51/255 reads 0.2
        assert label == f"{round(step)}/255" or float(label) == step / 255
    # what the choice is for: the digits' last L2 budget leaves most of this model robust
    last = DEFAULT_EPSILONS["l2"][-1]
    assert _robust_fraction(cnn, test.x[-100:], test.y[-100:], "l2", last) > 0.4 * clean


@given(st.lists(st.floats(1e-4, 5.0), min_size=3, max_size=3))
def test_readable_budgets_are_on_the_ladder_increasing_and_outside_the_sizes(sizes):
    low, middle, high = sorted(sizes)
    budgets = readable_budgets([low, middle, high])
    assert all(_on_ladder(b) for b in budgets)
    assert budgets[0] < budgets[1] < budgets[2]
    assert budgets[0] <= low * (1 + 1e-9) and budgets[2] >= high * (1 - 1e-9)
    assert budgets[0] > low / 1.5 - 1e-12  # rounded down by at most one ladder step


@given(st.lists(st.floats(1e-4, 0.9), min_size=3, max_size=3))
def test_eight_bit_budgets_are_distinct_multiples_of_1_255(sizes):
    low, middle, high = sorted(sizes)
    steps = [b * 255 for b in readable_budgets([low, middle, high], eight_bit=True)]
    assert all(step == round(step) for step in steps) and steps[0] >= 1
    assert steps[0] < steps[1] < steps[2]
    assert steps[0] <= max(1, low * 255) and steps[2] >= high * 255 - 1e-9


def test_eight_bit_data_is_recognised():
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert is_eight_bit(levels.view(4, 1, 8, 8))
    assert not is_eight_bit(torch.arange(17, dtype=torch.float32) / 16)  # the digits' 0..16


def test_given_budgets_win_silently(caplog):
    data = ImageData(torch.rand(4, 1, 2, 2), torch.arange(4), 4, "mnist:test")
    given = {"linf": [0.01, 0.02], "l2": [0.3]}
    choice = choose_budgets(_never_called, data, given, seed=0, device=CPU)
    assert choice.epsilons == given
    assert choice["linf"].how == choice["l2"].how == "given"
    assert caplog.records == []


def test_norms_no_stage_runs_at_are_not_measured():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.arange(4), 4, "npz:mine.npz")
    choice = choose_budgets(_never_called, data, None, seed=0, device=CPU, measure=())
    assert choice.epsilons == {norm: list(values) for norm, values in DEFAULT_EPSILONS.items()}
    assert choice["l2"].how == "default (no stage runs at these budgets)"


def test_the_digits_keep_their_conventional_budgets_without_running_the_model():
    data = ImageData(torch.rand(4, 1, 8, 8), torch.arange(4), 4, "digits:test:seed0")
    choice = choose_budgets(_never_called, data, {"l2": [0.7]}, seed=0, device=CPU)
    assert choice["linf"].epsilons == list(DEFAULT_EPSILONS["linf"])
    assert choice["linf"].how == "conventional (the embedded digits)"
    assert choice["l2"].epsilons == [0.7]


def test_a_known_set_keeps_its_conventional_budgets_and_gets_the_measured_ones_too(
    digits_cnn, digits_test
):
    data = digits_test.take(40)
    measured = choose_budgets(digits_cnn, _unknown(data), None, seed=0, device=CPU, points=20)
    for source, known, name in [
        ("mnist:t10k", "mnist", "MNIST"),
        ("fashion-mnist:test", "fashion-mnist", "Fashion-MNIST, as MNIST"),
        ("cifar10:test", "cifar10", "CIFAR-10"),
    ]:
        named = ImageData(data.x, data.y, 10, source)
        choice = choose_budgets(digits_cnn, named, None, seed=0, device=CPU, points=20)
        for norm in ("linf", "l2"):
            conventional = list(CONVENTIONAL_BUDGETS[known][1][norm])
            new = [
                eps
                for eps in measured[norm].epsilons
                if all(abs(eps - other) > 0.1 * other for other in conventional)
            ]
            assert choice[norm].epsilons == sorted(conventional + new)
            assert choice[norm].how.startswith(f"conventional ({name}); ")
            assert choice[norm].how.endswith(measured[norm].how)
        # the digits CNN breaks far below MNIST's L∞ budgets: the measured ones add some
        assert len(choice["linf"].epsilons) > 3 or known != "mnist"


def test_conventional_cifar_budgets_show_as_255ths_and_mnist_s_as_decimals():
    cifar = ImageData(torch.rand(2, 3, 2, 2), torch.arange(2), 2, "cifar10:test")
    mnist = ImageData(torch.rand(2, 1, 2, 2), torch.arange(2), 2, "mnist:test")
    conventional = {"seed": 0, "device": CPU, "measure": ()}
    assert choose_budgets(_never_called, cifar, None, **conventional)["linf"].labels == [
        "2/255",
        "4/255",
        "8/255",
    ]
    choice = choose_budgets(_never_called, mnist, None, **conventional)
    assert choice["linf"].labels == ["0.1", "0.2", "0.3"]
    assert choice["l2"].epsilons == [1.0, 2.0, 3.0]
    assert choice["l2"].how == "conventional (MNIST)"


def test_no_minimal_perturbation_found_falls_back_to_the_digits_defaults(digits_test):
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))  # class 9 everywhere
    data = _unknown(digits_test)
    choice = choose_budgets(constant, data, None, seed=0, device=CPU, points=20)
    nines = min(20, int((data.y == 9).sum()))
    for norm in ("linf", "l2"):
        assert choice[norm].epsilons == list(DEFAULT_EPSILONS[norm])
        assert choice[norm].how == (
            f"default (fallback: DeepFool found no adversarial example for {nines} of "
            f"{nines} points)"
        )
    named = ImageData(data.x, data.y, 10, "mnist:test")
    mnist = choose_budgets(constant, named, None, seed=0, device=CPU, points=20)
    assert mnist["linf"].epsilons == [0.1, 0.2, 0.3]
    assert mnist["linf"].how == (
        "conventional (MNIST); none added from minimal perturbations: DeepFool found no "
        f"adversarial example for {nines} of {nines} points"
    )
    zeros = ImageData(data.x, torch.zeros_like(data.y), 10, data.source)  # never class 9
    never_right = choose_budgets(constant, zeros, None, seed=0, device=CPU, points=20)
    assert "classifies none of the sampled points correctly" in never_right["l2"].how

    def without_gradient(x: torch.Tensor) -> torch.Tensor:
        return constant(x.detach()) + x.flatten(1)[:, :10].detach()  # varies, no gradient

    detached = choose_budgets(without_gradient, data, None, seed=0, device=CPU, points=20)
    assert detached["linf"].how.startswith("default (fallback: DeepFool failed on this model: ")


def test_data_outside_0_1_is_refused_in_one_line_naming_its_range():
    data = ImageData(torch.linspace(-1, 2, 16).view(4, 1, 2, 2), torch.arange(4), 4, "npz:z.npz")
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(DataError) as error:
        audit(model, data, model_name="m", stages=["linf"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("data: npz:z.npz holds values in [-1, 2]")
    assert "budgets" in message


def test_the_record_says_how_the_budgets_were_chosen(tmp_path, digits_test):
    data = _unknown(digits_test).take(40)
    torch.manual_seed(0)
    model = train_classifier(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data.x, data.y, epochs=20, seed=0
    )
    result = audit(
        model,
        data,
        model_name="m",
        stages=["linf", "l2"],
        attacks=["fgsm"],
        epsilons={"l2": [0.5]},
    )
    record = json.loads(json.dumps(result.to_dict()))
    validator = jsonschema.Draft202012Validator(results_schema())
    validator.validate(record)
    budgets = record["settings"]["budgets"]
    assert budgets["l2"] == {"epsilons": [0.5], "how": "given", "labels": ["0.5"]}
    assert budgets["linf"]["how"].startswith("from minimal perturbations (DeepFool on ")
    assert budgets["linf"]["epsilons"] == record["settings"]["epsilons"]["linf"]
    assert budgets["linf"]["epsilons"] == record["robustness"]["linf"]["epsilons"]
    assert AuditResult.from_dict(record).settings == result.settings
    older = {**record, "settings": {k: v for k, v in record["settings"].items() if k != "budgets"}}
    validator.validate(older)
    assert AuditResult.from_dict(older).settings.budgets is None
    page = render_report(result, tmp_path)
    assert "budgets (linf)" in page and "from minimal perturbations" in page


def test_the_cli_prints_how_the_budgets_were_chosen(digits_cnn, capsys, tmp_path):
    from vulnscope.cli import main

    arguments = ["audit", "--stages", "linf", "--attacks", "fgsm", "--limit", "20"]
    assert main([*arguments, "--workers", "1", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == [  # no L2 line: no stage ran at L2 budgets
        "linf budgets 0.05, 0.1, 0.2: conventional (the embedded digits)",
        "robust accuracy (linf) and the points each attack broke:",
    ]
