"""MagNet: scores against direct formulas, thresholds, TorchScript, and both attackers."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from torch import nn

from vulnscope.attacks import PGD
from vulnscope.data import load_digits
from vulnscope.defences.magnet import (
    DigitsAutoencoder,
    MagNet,
    fit_magnet,
    fit_threshold,
    jensen_shannon,
    reconstruction_error,
    train_autoencoder,
)
from vulnscope.defences.magnet_evaluation import (
    AdaptiveMagNetAttack,
    MagNetEvaluation,
    evaluate_adaptive,
    evaluate_oblivious,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.models import DigitsMLP, train_classifier


@pytest.fixture(scope="module")
def digits():
    train = load_digits("train")
    return train.x[:500], train.y[:500], train.x[500:800], load_digits("test")


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP and autoencoder trained on 500 images, MagNet fitted on 300 more."""
    x_fit, y_fit, x_val, _ = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = DigitsMLP(hidden=32)
    classifier = train_classifier(classifier, x_fit, y_fit, epochs=15, lr=3e-3, seed=0)
    autoencoder = train_autoencoder(
        DigitsAutoencoder(channels=6, seed=0), x_fit, epochs=40, lr=2e-2, seed=0
    )
    return fit_magnet(classifier, autoencoder, x_val, fpr=0.04)


def _untrained_magnet(**kwargs):
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    return MagNet(classifier, DigitsAutoencoder(channels=2, seed=1).eval(), **kwargs)


# --- the scores ---


def test_reconstruction_error_against_hand_computation():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    r = torch.tensor([[[[0.5, 0.0], [0.5, 0.75]]], [[[1.0, 1.0], [1.0, 0.0]]]])
    # sample 0: differences -0.5, 1, 0, -0.5; sample 1: one difference of 1
    assert reconstruction_error(x, r, 1.0).tolist() == [2.0, 1.0]
    torch.testing.assert_close(reconstruction_error(x, r, 2.0), torch.tensor([1.5**0.5, 1.0]))


def _jsd_reference(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    p, q = torch.softmax(a.double() / t, 1), torch.softmax(b.double() / t, 1)
    m = (p + q) / 2
    return 0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)


@pytest.mark.parametrize("temperature", [1.0, 10.0, 40.0])
def test_jensen_shannon_against_the_direct_formula(temperature):
    generator = torch.Generator().manual_seed(0)
    a = 5 * torch.randn(50, 10, generator=generator, dtype=torch.float64)
    b = a + torch.randn(50, 10, generator=generator, dtype=torch.float64)
    value = jensen_shannon(a, b, temperature)
    torch.testing.assert_close(value, _jsd_reference(a, b, temperature), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(value, jensen_shannon(b, a, temperature), rtol=0, atol=1e-15)
    assert jensen_shannon(a, a, temperature).abs().max() == 0
    assert bool((value > 0).all()) and bool((value <= math.log(2)).all())


def test_jensen_shannon_stays_finite_for_saturated_softmax():
    a = torch.tensor([[1e4, 0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1e4, 0.0]])
    value = jensen_shannon(a, b, 1.0)
    (grad,) = torch.autograd.grad(value.sum(), a)
    assert math.isclose(float(value.detach()), math.log(2), rel_tol=1e-6)
    assert bool(torch.isfinite(grad).all())


# --- thresholds ---


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.0125, 0.05, 0.3])
def test_fit_threshold_flags_floor_fpr_n_of_its_data(fpr):
    scores = torch.randn(400, generator=torch.Generator().manual_seed(1))
    threshold = fit_threshold(scores, fpr)
    assert int((scores > threshold).sum()) == math.floor(fpr * 400 + 1e-9)


def test_fit_threshold_with_ties_stays_below_fpr():
    scores = torch.tensor([0.0] * 5 + [1.0] * 5)
    assert float((scores > fit_threshold(scores, 0.3)).double().mean()) <= 0.3


def test_fit_magnet_keeps_each_detector_within_its_share(digits, trained):
    x_val = digits[2]
    scores = trained.scores(x_val)
    per_detector = (scores > trained.thresholds_).double().mean(0)
    share = 0.04 / 4
    # 300 samples: exactly floor(3) = 3 above each threshold when the scores are distinct
    assert per_detector.tolist() == pytest.approx([3 / 300] * 4)
    assert bool((per_detector <= share).all())
    assert float(trained.detect(x_val).double().mean()) <= 0.04


# --- the module ---


def test_forward_scores_and_detect_are_their_definitions(digits, trained):
    x = digits[3].x[:40]
    with torch.no_grad():
        reconstruction = trained.autoencoder(x)
        logits, reformed = trained.classifier(x), trained.classifier(reconstruction)
        torch.testing.assert_close(trained(x), reformed, rtol=0, atol=0)
        expected = torch.stack(
            [
                (x - reconstruction).abs().flatten(1).sum(1),
                (x - reconstruction).pow(2).flatten(1).sum(1).sqrt(),
                _jsd_reference(logits, reformed, 10.0).float(),
                _jsd_reference(logits, reformed, 40.0).float(),
            ],
            1,
        )
        scores = trained.scores(x)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
        assert torch.equal(trained.detect(x), (scores > trained.thresholds_).any(1))
    assert trained.detector_names == ["l1", "l2", "jsd-T10", "jsd-T40"]


def test_unfitted_magnet_detects_nothing():
    magnet = _untrained_magnet()
    assert not bool(magnet.detect(torch.rand(8, 1, 8, 8)).any())


@pytest.mark.filterwarnings("ignore:`torch.jit.(save|load)` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("p", "temperatures"), [((1.0, 2.0), (10.0, 40.0)), ((), (10.0,)), ((2.0,), ())]
)
def test_torchscript_round_trip(digits, tmp_path, p, temperatures):
    _, _, x_val, test = digits
    magnet = fit_magnet(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(),
        DigitsAutoencoder(channels=2, seed=0),
        x_val,
        p=p,
        temperatures=temperatures,
    )
    scripted = torch.jit.script(magnet)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    path = tmp_path / "magnet.pt"
    torch.jit.save(scripted, str(path))
    x = test.x[:30]
    for loaded in (torch.jit.load(buffer), torch.jit.load(str(path))):
        torch.testing.assert_close(loaded(x), magnet(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.scores(x), magnet.scores(x), rtol=0, atol=0)
        assert torch.equal(loaded.detect(x), magnet.detect(x))
        assert torch.equal(loaded.thresholds_, magnet.thresholds_)


# --- the autoencoder ---


def test_digits_autoencoder_is_seeded_and_maps_into_the_unit_box():
    state = torch.random.get_rng_state()
    a, b = DigitsAutoencoder(seed=3), DigitsAutoencoder(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder.conv1.weight, DigitsAutoencoder(seed=4).encoder.conv1.weight)
    with torch.no_grad():
        out = DigitsAutoencoder(pool=False)(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 1, 8, 8) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_train_autoencoder_beats_the_mean_image_and_is_reproducible(digits):
    x, held_out = digits[0][:300], digits[2]

    def error(prediction):
        return float((prediction - held_out).pow(2).mean())

    state = torch.random.get_rng_state()
    runs = [
        train_autoencoder(DigitsAutoencoder(channels=4, seed=0), x, epochs=30, lr=2e-2, seed=seed)
        for seed in (5, 5, 6)
    ]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not runs[0].training
    with torch.no_grad():
        assert error(runs[0](held_out)) < 0.8 * error(x.mean(0, keepdim=True))
    for name, value in runs[0].state_dict().items():
        assert torch.equal(value, runs[1].state_dict()[name]), name
    assert not torch.equal(runs[0].encoder.conv1.weight, runs[2].encoder.conv1.weight)


# --- the attackers ---


def test_adaptive_successes_are_undetected_and_misclassified(digits, trained):
    test = digits[3]
    x, y = test.x[:60], test.y[:60]
    attack = AdaptiveMagNetAttack(eps=0.15, steps=15, penalties=(1.0, 10.0), seed=0)
    result = attack(trained, x, y)
    assert 0.1 < result.success_rate < 1.0
    assert float((result.x_adv - x).abs().amax()) <= 0.15 + 1e-6
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    # recomputed from the formulas, in float64, outside the module
    with torch.no_grad():
        x_adv = result.x_adv.double()
        classifier = copy.deepcopy(trained.classifier).double()
        reconstruction = copy.deepcopy(trained.autoencoder).double()(x_adv)
        logits, reformed = classifier(x_adv), classifier(reconstruction)
    diff = (x_adv - reconstruction).flatten(1)
    scores = torch.stack(
        [
            diff.abs().sum(1),
            diff.pow(2).sum(1).sqrt(),
            _jsd_reference(logits, reformed, 10.0),
            _jsd_reference(logits, reformed, 40.0),
        ],
        1,
    )
    ratio = (scores / trained.thresholds_.double()).amax(1)
    top2 = reformed.topk(2, dim=1).values
    recomputed = (ratio <= 1) & (reformed.argmax(1) != y)
    # float32 inside the attack, float64 here: only a point on a boundary may disagree
    borderline = ((ratio - 1).abs() < 1e-4) | ((top2[:, 0] - top2[:, 1]) < 1e-4)
    assert torch.equal(result.success[~borderline], recomputed[~borderline])
    assert int((result.success & recomputed).sum()) >= 5
    again = attack(trained, x, y)
    assert torch.equal(again.x_adv, result.x_adv)


def test_adaptive_attack_leaves_the_model_as_it_was(digits, trained):
    test = digits[3]
    flags = [parameter.requires_grad for parameter in trained.parameters()]
    AdaptiveMagNetAttack(eps=0.1, steps=2, penalties=(1.0,))(trained, test.x[:5], test.y[:5])
    assert [parameter.requires_grad for parameter in trained.parameters()] == flags
    assert not trained.training


def _check_consistent(result: MagNetEvaluation, magnet, x, y):
    with torch.no_grad():
        assert result.clean_false_positive_rate == pytest.approx(
            float(magnet.detect(x).double().mean())
        )
        assert result.pipeline_accuracy == pytest.approx(
            float((magnet(x).argmax(1) == y).double().mean())
        )
    detected = result.detection_rate
    assert result.defended_fraction == pytest.approx(
        detected + (1 - detected) * result.undetected_accuracy
    )
    json.dumps(result.to_dict(), allow_nan=False)


def test_evaluations_agree_with_the_attacks(digits, trained):
    test = digits[3]
    x, y = test.x[:60], test.y[:60]
    oblivious = evaluate_oblivious(trained, x, y, PGD(eps=0.15, steps=10))
    assert oblivious.attacker == "oblivious" and oblivious.eps == 0.15
    _check_consistent(oblivious, trained, x, y)
    attack = AdaptiveMagNetAttack(eps=0.15, steps=15, penalties=(1.0, 10.0))
    adaptive = evaluate_adaptive(trained, x, y, attack)
    _check_consistent(adaptive, trained, x, y)
    assert adaptive.defended_fraction == pytest.approx(1 - attack(trained, x, y).success_rate)
    assert adaptive.median_norm <= 0.15 + 1e-6


def test_to_dict_writes_none_for_nan():
    record = MagNetEvaluation(
        attacker="adaptive",
        attack="A()",
        norm="linf",
        eps=0.1,
        samples=2,
        clean_accuracy=1.0,
        pipeline_accuracy=1.0,
        clean_false_positive_rate=0.0,
        bare_success_rate=1.0,
        detection_rate=1.0,
        undetected_accuracy=math.nan,
        defended_fraction=1.0,
        median_norm=0.1,
    ).to_dict()
    assert record["undetected_accuracy"] is None
    json.dumps(record, allow_nan=False)


# --- bad arguments ---

Y8 = torch.zeros(8, dtype=torch.long)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, fpr=0.0),
            InvalidArgumentError,
            "fpr must be > 0",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, fpr=1.0),
            InvalidArgumentError,
            r"fpr must be in \(0, 1\)",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x * 2),
            InvalidArgumentError,
            "x_val must lie inside bounds",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, p=(0.5,)),
            InvalidArgumentError,
            r"p\[0\] must be >= 1",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, temperatures=(0,)),
            InvalidArgumentError,
            r"temperatures\[0\] must be > 0",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, p=2.0),
            InvalidTypeError,
            "p must be a sequence",
        ),
        (
            lambda m, x: fit_magnet(m.classifier, m.autoencoder, x, p=(), temperatures=()),
            InvalidArgumentError,
            "at least one detector",
        ),
        (
            lambda m, x: MagNet("net", m.autoencoder),
            InvalidTypeError,
            "classifier must be a torch.nn.Module",
        ),
        (
            lambda m, x: MagNet(m.classifier, m.autoencoder, thresholds=torch.ones(3)),
            InvalidArgumentError,
            r"thresholds must be a tensor of shape \(4,\)",
        ),
        (
            lambda m, x: fit_threshold(torch.zeros(0), 0.1),
            InvalidArgumentError,
            "scores must be a non-empty",
        ),
        (
            lambda m, x: fit_threshold(torch.zeros(5), 1.0),
            InvalidArgumentError,
            r"fpr must be in \[0, 1\)",
        ),
        (
            lambda m, x: train_autoencoder(m.autoencoder, x, noise=-1.0),
            InvalidArgumentError,
            "noise must be >= 0",
        ),
        (
            lambda m, x: train_autoencoder(m.autoencoder, x, epochs=0),
            InvalidArgumentError,
            "epochs must be an integer >= 1",
        ),
        (
            lambda m, x: train_autoencoder("ae", x),
            InvalidTypeError,
            "autoencoder must be a torch.nn.Module",
        ),
        (lambda m, x: DigitsAutoencoder(pool=1), InvalidTypeError, "pool must be True or False"),
        (lambda m, x: AdaptiveMagNetAttack(eps=-0.1), InvalidArgumentError, "eps must be >= 0"),
        (
            lambda m, x: AdaptiveMagNetAttack(eps=0.1, penalties=()),
            InvalidArgumentError,
            "penalties must be a non-empty",
        ),
        (
            lambda m, x: AdaptiveMagNetAttack(eps=0.1, penalties=(1.0, 0.0)),
            InvalidArgumentError,
            r"penalties\[1\] must be > 0",
        ),
        (
            lambda m, x: AdaptiveMagNetAttack(eps=0.1, norm="l3"),
            InvalidArgumentError,
            "norm must be one of",
        ),
        (
            lambda m, x: AdaptiveMagNetAttack(eps=0.1)(m.classifier, x, Y8),
            InvalidTypeError,
            "magnet must be a vulnscope",
        ),
        (
            lambda m, x: AdaptiveMagNetAttack(eps=0.1)(m, x, torch.zeros(3, dtype=torch.long)),
            InvalidArgumentError,
            r"y must have shape \(8,\)",
        ),
        (
            lambda m, x: evaluate_oblivious(m, x, Y8, "pgd"),
            InvalidTypeError,
            "attack must be a vulnscope.attacks.Attack",
        ),
        (
            lambda m, x: evaluate_adaptive(m, x, Y8, PGD(eps=0.1)),
            InvalidTypeError,
            "attack must be an AdaptiveMagNetAttack",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(
            _untrained_magnet(), torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        )
