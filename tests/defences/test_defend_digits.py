"""``defend_digits`` and ``vulnscope defend``: every method trains, saves and audits."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from vulnscope.cli import main
from vulnscope.data import load_digits
from vulnscope.defences.digits import DEFENCE_METHODS, PROVABLE_TRAINING, defend_digits
from vulnscope.defences.parseval import parseval_deviation
from vulnscope.errors import InvalidArgumentError
from vulnscope.models import load_model, save_torchscript, torchscript_metadata


@pytest.fixture(scope="module")
def test_split():  # type: ignore[no-untyped-def]
    return load_digits("test")


@pytest.mark.parametrize(
    "method", [m for m in DEFENCE_METHODS if m != "none" and m not in PROVABLE_TRAINING]
)  # provable training: the CLI test below trains "ibp"; the others are wired, not trained
def test_every_method_trains_a_scriptable_classifier(method, test_split, tmp_path) -> None:  # type: ignore[no-untyped-def]
    defended = defend_digits(method, epochs=1, seed=0)
    model = defended.model
    assert defended.method == method and defended.settings["epochs"] == 1
    assert not model.training
    with torch.no_grad():
        logits = model(test_split.x[:16])
    assert logits.shape == (16, 10) and torch.isfinite(logits).all()
    path = save_torchscript(model, tmp_path / "model.pt", metadata={"method": method})
    loaded = load_model(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(test_split.x[:16]), logits)
    assert torchscript_metadata(path) == {"method": method}


def test_parseval_method_keeps_the_weights_near_parseval_frames() -> None:
    plain = defend_digits("none", epochs=2).model
    parseval = defend_digits("parseval", epochs=2).model
    assert max(parseval_deviation(parseval).values()) < 0.5 * max(
        parseval_deviation(plain).values()
    )


def test_distilled_logits_are_about_t_times_larger(test_split) -> None:  # type: ignore[no-untyped-def]
    plain = defend_digits("none", epochs=3).model
    distilled = defend_digits("distill", epochs=3, temperature=50.0).model

    def spread(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(model(test_split.x).std(dim=1).median())

    assert spread(distilled) > 10 * spread(plain)


def test_same_seed_same_model() -> None:
    a = defend_digits("fgsm", epochs=1, seed=3).model
    b = defend_digits("fgsm", epochs=1, seed=3).model
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "adversarial"}, "method"),
        ({"method": "pgd", "eps": 0.0}, "eps"),
        ({"method": "pgd", "dropout": 1.0}, "dropout"),
        ({"method": "distill", "dropout": 0.5}, "dropout"),
        ({"method": "pgd", "epochs": 0}, "epochs"),
        ({"method": "parseval", "parseval_beta": 1.0}, "parseval_beta"),
        ({"method": "ibp", "dropout": 0.5}, "dropout"),
        ({"method": "crown-ibp", "eps": -0.1}, "eps"),
    ],
)
def test_bad_settings_are_refused(kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=match):
        defend_digits(**kwargs)


def test_cli_defend_writes_a_model_that_audit_reads(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model_file = tmp_path / "models" / "pgd.pt"
    assert (
        main(
            [
                "defend",
                "--method",
                "pgd",
                "--epochs",
                "1",
                "--dropout",
                "0.2",
                "--out",
                str(model_file),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(model_file) in printed
    metadata = torchscript_metadata(model_file)
    assert metadata["method"] == "pgd" and metadata["settings"]["dropout"] == 0.2
    out = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                "--model",
                str(model_file),
                "--limit",
                "20",
                "--attacks",
                "fgsm",
                "--stages",
                "linf",
                "--linf-eps",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads((out / "results.json").read_text())
    assert record["model"]["name"] == str(model_file) and record["data"]["samples"] == 20
    assert record["model"]["metadata"] == json.loads(json.dumps(metadata))  # shown in the report
    page = (out / "report.html").read_text()
    assert "<h2>Model metadata</h2>" in page and "dropout" in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["defend", "--method", "bogus", "--out", "m.pt"], "invalid choice"),
        (["defend", "--method", "pgd"], "--out"),
        (["defend", "--method", "pgd", "--out", "m.pt", "--dropout", "1"], "[0, 1)"),
        (["defend", "--method", "pgd", "--out", "m.pt", "--eps", "-1"], "> 0"),
    ],
)
def test_cli_defend_bad_arguments_are_one_line(
    argv, message, capsys, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_cli_defend_refuses_a_directory_as_out(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["defend", "--method", "pgd", "--epochs", "1", "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_method_none_is_exactly_the_reference_recipe() -> None:
    from dataclasses import replace

    from vulnscope.models.cache import PRETRAINED, train_recipe

    factory, recipe = PRETRAINED["digits-cnn"]
    train = load_digits("train")
    reference = train_recipe(factory, replace(recipe, epochs=2), train.x, train.y, seed=4)
    defended = defend_digits("none", epochs=2, seed=4).model
    for (name, p), (_, q) in zip(
        reference.state_dict().items(), defended.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_defend_keeps_its_model_refuses_other_options_by_name_and_retrains_with_fresh(
    tmp_path, capsys, monkeypatch
):
    from vulnscope.defences import digits

    out = tmp_path / "fgsm.pt"
    args = ["defend", "--method", "fgsm", "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    trained = out.read_bytes()
    capsys.readouterr()

    @functools.wraps(defend_digits)  # the parser reads its defaults from the signature
    def untrainable(*arguments, **options):
        raise AssertionError("the finished model was retrained")

    with monkeypatch.context() as patched:
        patched.setattr(digits, "defend_digits", untrainable)
        assert main(args) == 0  # the same options: the model on disk is the one asked for
        assert "already holds this model; --fresh retrains it" in capsys.readouterr().out
        assert main([*args[:4], "2", *args[5:]]) == 1  # other options: refused, not replaced
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error == (
        f"vulnscope: error: {out} was made with other settings (epochs: 1 there, 2 now); "
        "rerun with the same options, or with --fresh to start over"
    )
    assert out.read_bytes() == trained
    assert main([*args[:4], "2", *args[5:], "--fresh"]) == 0
    assert torchscript_metadata(out)["settings"]["epochs"] == 2


def test_cli_defend_trains_a_provably_robust_model(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model_file = tmp_path / "ibp.pt"
    assert main(["defend", "--method", "ibp", "--epochs", "1", "--out", str(model_file)]) == 0
    assert "ibp: test accuracy" in capsys.readouterr().out
    settings = torchscript_metadata(model_file)["settings"]
    assert settings["eps"] == 0.1 and settings["train_eps"] == pytest.approx(0.15)
    assert (settings["warmup"], settings["ramp"]) == pytest.approx((0.1, 0.5))
    with torch.no_grad():
        assert load_model(str(model_file))(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("method", "bound", "kappa"),
    [("crown-ibp", "crown-ibp", (1.0, 0.0)), ("wong-kolter", "dual", (0.0, 0.0))],
)
def test_provable_methods_train_on_their_bound_with_the_scaled_schedule(  # type: ignore[no-untyped-def]
    method, bound, kappa, monkeypatch
):
    from vulnscope.defences import ProvableTraining, RampSchedule, digits

    seen = {}

    def train(model, x, y, **options):  # type: ignore[no-untyped-def]
        seen.update(options)
        return model.eval()

    monkeypatch.setattr(digits, "train_classifier", train)
    defended = defend_digits(method, epochs=20, eps=0.2)
    objective = seen["objective"]
    assert isinstance(objective, ProvableTraining) and objective.method == bound
    assert objective.eps == pytest.approx(0.3) and seen["epochs"] == 20
    assert objective.schedule == RampSchedule(warmup=2.0, ramp=10.0)
    assert (objective.kappa_start, objective.kappa_end) == kappa
    assert defended.settings["train_eps"] == pytest.approx(0.3)
    assert digits.defence_settings(method)["epochs"] == digits.PROVABLE_EPOCHS[method]


def test_sdae_reformer_puts_the_trained_stack_in_front_of_the_reference_cnn(test_split) -> None:  # type: ignore[no-untyped-def]
    from vulnscope.defences.sdae import Reformer, StackedDenoisingAutoencoder

    defended = defend_digits("sdae-reformer", epochs=1, seed=0)
    model = defended.model
    assert isinstance(model, Reformer)
    assert isinstance(model.autoencoder, StackedDenoisingAutoencoder)
    assert list(model.autoencoder.sizes) == defended.settings["sizes"]
    assert defended.settings["sdae_epochs"] == 1
    x = test_split.x[:8]
    with torch.no_grad():
        reconstruction = model.autoencoder(x)
        assert not torch.equal(reconstruction, x)  # a real filter, not the identity
        torch.testing.assert_close(model(x), model.classifier(reconstruction))
