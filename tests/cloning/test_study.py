"""The cloning study: cells, resumption, summaries, the paired comparison, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from vulnscope._checkpoint import CheckpointError
from vulnscope._statistics import mean_interval
from vulnscope.cli import main
from vulnscope.cloning import study
from vulnscope.cloning.job import run_clone
from vulnscope.cloning.plots import plot_clone_damage
from vulnscope.cloning.rbm_clone import DeepRBMCloneTrainer
from vulnscope.cloning.reverse import MemoizedReverse
from vulnscope.cloning.study import (
    CloneStudySettings,
    DefenceSpec,
    Victim,
    clone_study,
    defence_grid,
    paired_comparison,
    summarise_cells,
)
from vulnscope.errors import InvalidArgumentError, InvalidTypeError
from vulnscope.rbm.network import DeepRBM


class CountingFisher:
    """A fixed PSD Fisher matrix that counts the rows it was asked for."""

    num_classes = 3

    def __init__(self) -> None:
        self.rows = 0
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(3, 3, generator=generator, dtype=torch.float64)
        self.matrix = a @ a.T

    def output_fisher(self, probs: torch.Tensor) -> torch.Tensor:
        self.rows += probs.shape[0]
        return self.matrix.expand(probs.shape[0], 3, 3).clone()


def _tiny_victim() -> Victim:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 6, generator=generator)
    teacher = nn.Linear(6, 3)
    with torch.no_grad():
        teacher.weight.copy_(3 * weight)
        teacher.bias.zero_()
    x = torch.rand(160, 6, generator=generator)
    y = teacher(x).argmax(1).detach()
    return Victim(
        name="tiny",
        model=teacher.eval(),
        architecture=lambda: nn.Linear(6, 3),
        train_x=x[:120],
        test_x=x[120:],
        test_y=y[120:],
        reverse=CountingFisher(),
        transfer_eps=0.2,
    )


SETTINGS = CloneStudySettings(
    budgets=(0.2, 0.6),
    seeds=2,
    defences=("none", "fisher", "random", "label_only"),
    epochs=3,
    transfer_steps=3,
)


def test_cells_are_written_then_reloaded_without_recomputing(tmp_path, monkeypatch):
    victim = _tiny_victim()
    cells = clone_study(victim, SETTINGS, tmp_path)
    specs = defence_grid(SETTINGS.defences, SETTINGS.budgets)
    assert [s.key for s in specs] == [
        "none",
        "fisher-b0.2",
        "fisher-b0.6",
        "random-b0.2",
        "random-b0.6",
        "label_only",
    ]
    assert len(cells) == len(specs) * 2
    assert len(list((tmp_path / "tiny").glob("*-seed*.json"))) == len(cells)
    for cell in cells:
        assert cell["utility"]["top1_agreement"] == 1.0  # every defence here keeps the class
        if cell["defence"] in ("fisher", "random"):
            # the whole budget where every output can take it, never more
            if cell["budget"] == 0.2:
                assert cell["utility"]["mean_l1"] == pytest.approx(0.2, abs=1e-9)
            assert 0.9 * cell["budget"] < cell["utility"]["mean_l1"] <= cell["budget"] + 1e-9
    calls = []
    monkeypatch.setattr(study, "run_cell", lambda *a: calls.append(a))
    again = clone_study(victim, SETTINGS, tmp_path)
    assert calls == [] and again == cells
    # a smaller grid of the same settings reuses its cells too
    subset = clone_study(
        victim, dataclasses.replace(SETTINGS, defences=("none",), seeds=1), tmp_path
    )
    assert calls == [] and subset == cells[:1]


def test_cells_made_with_other_settings_are_refused_by_name_not_recomputed(tmp_path, monkeypatch):
    settings = CloneStudySettings(
        budgets=(0.2,), seeds=1, defences=("none",), epochs=2, transfer_steps=2
    )
    victim = _tiny_victim()
    first = clone_study(victim, settings, tmp_path)
    calls = []
    monkeypatch.setattr(study, "run_cell", lambda *a: calls.append(a) or first[0])
    with pytest.raises(CheckpointError) as refused:
        clone_study(victim, dataclasses.replace(settings, epochs=3), tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "epochs: 2 there, 3 now" in message and "--fresh" in message
    assert calls == []  # nothing was recomputed, nothing overwritten
    # another victim with the same name (other weights) is not this checkpoint's either
    retrained = _tiny_victim()
    with torch.no_grad():
        retrained.model.weight.add_(1e-3)
    with pytest.raises(CheckpointError, match="model_digest: "):
        clone_study(retrained, settings, tmp_path)
    # starting fresh discards the old cells and recomputes them
    assert (
        clone_study(victim, dataclasses.replace(settings, epochs=3), tmp_path, resume=False)
        == first
    )
    assert len(calls) == 1


def test_a_damaged_cell_file_is_refused_by_name(tmp_path):
    victim = _tiny_victim()
    settings = CloneStudySettings(
        budgets=(0.2,), seeds=1, defences=("none",), epochs=2, transfer_steps=2
    )
    clone_study(victim, settings, tmp_path)
    path = tmp_path / "tiny" / "none-seed0.json"
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"none-seed0\.json: is damaged .*--fresh"):
        clone_study(victim, settings, tmp_path)


def _fake_cells() -> list[dict]:
    cells = []
    for seed, (fisher_acc, random_acc) in enumerate([(0.7, 0.8), (0.72, 0.79), (0.69, 0.81)]):
        for defence, accuracy in (("fisher", fisher_acc), ("random", random_acc)):
            cells.append(
                {
                    "victim": "v",
                    "defence": defence,
                    "key": f"{defence}-b0.5",
                    "budget": 0.5,
                    "decimals": None,
                    "seed": seed,
                    "utility": {"top1_agreement": 1.0, "mean_l1": 0.5, "mean_kl": 0.1},
                    "clone": {
                        "accuracy": accuracy,
                        "agreement": accuracy,
                        "transfer_rate": 1 - accuracy,
                    },
                }
            )
    return cells


def test_summaries_are_student_t_intervals_over_seeds():
    rows = summarise_cells(_fake_cells())
    fisher = next(row for row in rows if row["defence"] == "fisher")
    expected = mean_interval([0.7, 0.72, 0.69])
    assert fisher["seeds"] == 3
    assert fisher["clone_accuracy"]["mean"] == pytest.approx(expected.mean)
    assert fisher["clone_accuracy"]["ci_low"] == pytest.approx(expected.low)
    assert fisher["mean_l1"]["half_width"] == pytest.approx(0.0)


def test_the_paired_comparison_differences_seed_by_seed():
    (row,) = paired_comparison(_fake_cells())
    differences = [0.7 - 0.8, 0.72 - 0.79, 0.69 - 0.81]
    expected = mean_interval(differences)
    assert row["clone_accuracy"]["mean"] == pytest.approx(expected.mean)
    assert row["clone_accuracy"]["half_width"] == pytest.approx(expected.half_width)
    assert row["clone_accuracy"]["beyond_ci"] is True  # all three pairs are ~0.1 apart
    assert row["transfer_rate"]["mean"] == pytest.approx(-expected.mean)


def test_the_figure_is_written(tmp_path):
    rows = summarise_cells(_fake_cells())
    path = plot_clone_damage(rows, tmp_path / "damage.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memoized_reverse_computes_each_row_once():
    inner = CountingFisher()
    memo = MemoizedReverse(inner)
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5]], dtype=torch.float64)
    first = memo.output_fisher(probs)
    assert inner.rows == 2 and memo.computed == 2
    second = memo.output_fisher(probs[[1, 0]])
    assert inner.rows == 2
    torch.testing.assert_close(second, first[[1, 0]])
    with pytest.raises(InvalidTypeError, match="reverse must have num_classes"):
        MemoizedReverse(object())  # type: ignore[arg-type]


def test_the_deep_rbm_trainer_learns_from_published_vectors():
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(2, (120,), generator=generator)
    means = torch.tensor([[0.9, 0.9, 0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.9, 0.9, 0.5, 0.5]])
    x = (torch.rand(120, 6, generator=generator) < means[y]).float()
    targets = torch.nn.functional.one_hot(y, 2).double() * 0.9 + 0.05
    for method in ("fine_tune", "eq14"):
        clone = DeepRBMCloneTrainer(method=method, pretrain_epochs=5, epochs=20)(  # type: ignore[arg-type]
            DeepRBM([6, 8], 2, seed=1), x, targets, 0
        )
        accuracy = float((clone(x).argmax(1) == y).float().mean())
        assert accuracy > 0.85, (method, accuracy)
    with pytest.raises(InvalidTypeError, match="clone must be a DeepRBM"):
        DeepRBMCloneTrainer()(nn.Linear(6, 2), x, targets, 0)


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--budgets", "1.9"], 1, "budgets must be < 1.8 for 10 classes"),
        (["--budgets", "0"], 2, "expected budgets > 0"),
        (["--victims", "resnet"], 2, "expected comma-separated names from deep-rbm,digits-cnn"),
        (["--defences", "fisher,magic"], 2, "expected comma-separated names from none,"),
        (["--query-budget", "0"], 2, "expected a number >= 1, got 0"),
    ],
)
def test_bad_command_lines_get_one_line_and_a_status(tmp_path, capsys, args, status, message):
    assert main(["clone", "--out", str(tmp_path / "o"), *args]) == status
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_run_clone_refuses_bad_arguments_before_any_work(tmp_path):
    with pytest.raises(InvalidArgumentError, match="victims must be one of"):
        run_clone(tmp_path, victims=["vgg"])
    with pytest.raises(InvalidArgumentError, match="defences must be one of"):
        run_clone(tmp_path, defences=["nothing"])
    assert not any(tmp_path.iterdir())


def test_run_clone_writes_the_record_and_figure(tmp_path, digits_cnn):
    record = run_clone(
        tmp_path,
        victims=["digits-cnn"],
        budgets=[0.5],
        seeds=2,
        defences=["none", "random", "label_only"],
        epochs=1,
    )
    saved = json.loads((tmp_path / "clone.json").read_text(encoding="utf-8"))
    assert saved == record
    assert (tmp_path / "clone_damage.png").is_file()
    assert [row["key"] for row in record["rows"]] == ["none", "random-b0.5", "label_only"]
    assert len(record["cells"]) == 6 and record["fisher_vs_random"] == []
    for row in record["rows"]:
        assert row["seeds"] == 2 and row["top1_agreement"]["mean"] == 1.0
        assert 0 <= row["clone_accuracy"]["mean"] <= 1
        assert math.isfinite(row["transfer_rate"]["half_width"])
    assert record["victims"]["digits-cnn"]["test_inputs"] == 397


def test_defence_specs_have_readable_keys():
    assert DefenceSpec("rounding", decimals=2).key == "rounding-d2"
    assert DefenceSpec("mad", budget=0.25).key == "mad-b0.25"
    with pytest.raises(InvalidArgumentError, match="defence must be one of"):
        defence_grid(["fisher", "bogus"], [0.1])


def test_clone_rerun_with_other_settings_is_refused_in_one_line_until_fresh(
    tmp_path, capsys, digits_cnn
):
    args = [
        "clone",
        "--victims",
        "digits-cnn",
        "--defences",
        "none",
        "--budgets",
        "0.5",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    capsys.readouterr()
    other = [*args[:-2], "--queries", "disjoint", *args[-2:]]
    assert main(other) == 1
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err.startswith("vulnscope: error: the checkpoint in ")
    assert "data_digest: " in err and err.endswith(
        "rerun with the same options, or with --fresh to start over"
    )
    assert main([*other, "--fresh"]) == 0
    saved = json.loads((tmp_path / "clone.json").read_text(encoding="utf-8"))
    assert saved["settings"]["queries"] == "disjoint"
