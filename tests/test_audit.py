from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vulnscope.audit import (
    SCHEMA_VERSION,
    STAGES,
    audit,
    audit_pieces,
    default_stages,
    registered_stages,
    results_schema,
    verdict,
    without_clock,
)
from vulnscope.audit.stages.rg import RGLayer, RGOperators, RGResult, RGSummary
from vulnscope.audit.stages.robustness import Evaluation, Robustness
from vulnscope.data import ImageData
from vulnscope.diagnostics.fisher import input_fisher
from vulnscope.errors import InvalidArgumentError, ModelError
from vulnscope.evaluate import (
    CASCADE_ATTACKS,
    adaptive_evaluation,
    minimal_perturbations,
    standard_evaluation,
)

SMALL = {"geometry_samples": 8, "batch_size": 16}
_RG = RGResult(
    depth=3,
    widths=[64, 8, 8],
    operators=RGOperators(0, []),
    summary=RGSummary(
        inputs=1,
        skipped_certain=0,
        accuracy_sampled=1.0,
        layers=[RGLayer(2, "eigenvalue", 1.5, 0.1, 0.1, 1.0, 0.5)],
        product_norm_mean=None,
        product_norm_stderr=None,
        fisher_top_median=None,
        mean_field_alignment_median=None,
        class_change_distance_median={},
        class_change_found_fraction={},
    ),
    relevant_layers=[2],
)


@pytest.mark.parametrize(
    "evaluation, direct_evaluation, attacks",
    [
        ("adaptive", adaptive_evaluation, ["apgd-ce", "apgd-t"]),
        ("standard", standard_evaluation, ["apgd-ce", "square"]),
    ],
)
def test_audit_record_agrees_with_the_cascade(
    digits_cnn, digits_test, evaluation, direct_evaluation, attacks
):
    data = digits_test.take(50 if evaluation == "standard" else 30)
    record = audit(
        digits_cnn,
        data,
        model_name="cnn",
        stages=["linf"],
        epsilons={"linf": [0.0, 0.1]},
        attacks=attacks,
        evaluation=evaluation,
    ).to_dict()
    clean = float((digits_cnn(data.x).argmax(1) == data.y).double().mean())
    curve = record["robustness"]["linf"]
    assert record["clean_accuracy"] == pytest.approx(clean)
    assert curve["accuracy"][0] == pytest.approx(clean)
    direct = direct_evaluation(digits_cnn, data.x, data.y, eps=0.1, attacks=attacks)
    assert curve["accuracy"][1] == pytest.approx(direct.robust_accuracy)
    assert curve["evaluations"][0] == direct.to_dict()
    assert set(curve["attack_seconds"]["0.1"]) == {CASCADE_ATTACKS[a].name for a in attacks}
    assert record["settings"]["stages"] == ["linf"] and "l2" not in record["robustness"]
    assert record["settings"]["evaluation"] == evaluation


def test_minimal_stage_merges_chunks_into_the_one_call_distribution(digits_cnn, digits_test):
    data = digits_test.take(40)
    record = audit(
        digits_cnn, data, model_name="cnn", stages=["minimal"], quick=True, batch_size=15
    ).to_dict()
    direct = minimal_perturbations(digits_cnn, data.x, data.y, norm="l2")
    section = record["minimal_perturbations"]
    expected = direct.to_dict()
    for key in ("norm", "attacks", "n", "n_clean_correct", "n_not_found", "found_by"):
        assert section[key] == expected[key], key
    for key in ("median", "mean_found"):
        assert section[key] == pytest.approx(expected[key], rel=1e-5)
    assert section["quantiles"] == pytest.approx(expected["quantiles"], rel=1e-5)
    norms = data.x.flatten(1).norm(dim=1)
    assert section["input_l2_median"] == pytest.approx(float(norms.median()))
    # no cascade ran: the clean accuracy comes from its own pass
    assert record["clean_accuracy"] == pytest.approx(float(direct.clean_correct.double().mean()))


def test_for_a_relu_network_the_fisher_and_hessian_spectra_coincide(digits_cnn, digits_test):
    """For piecewise-linear networks the input Hessian of the cross-entropy is
    J^T (diag p - p p^T) J, the input Fisher: the two stages' independent estimators
    (eigendecomposition through the Jacobian; Lanczos on Hessian-vector products) agree.
    """
    record = audit(
        digits_cnn, digits_test.take(60), model_name="cnn", stages=["spectra"], **SMALL
    ).to_dict()
    spectra = record["spectra"]
    assert spectra["samples"] == 8
    fisher, hessian = (
        spectra["fisher"]["eigenvalue_median"],
        spectra["hessian"]["eigenvalue_median"],
    )
    assert hessian[:3] == pytest.approx(fisher[:3], rel=1e-3)
    assert spectra["fisher"]["trace_median"] >= fisher[0] > 0
    profile = spectra["hessian"]["profile_median"]  # eigenvalue against rank, all 64
    assert len(profile) == 64 and profile == sorted(profile, reverse=True)


def test_dangerous_rows_change_class_where_a_fine_walk_along_v1_does(digits_cnn, digits_test):
    data = digits_test.take(60)
    record = audit(
        digits_cnn, data, model_name="cnn", stages=["dangerous"], epsilons={"linf": [0.1]}, **SMALL
    ).to_dict()
    section = record["dangerous"]
    assert section["linf_eps"] == 0.1 and 0 < len(section["rows"]) <= 6
    checked = 0
    for row in section["rows"]:
        x = data.x[row["index"] : row["index"] + 1]
        assert row["label"] == int(data.y[row["index"]]) == int(digits_cnn(x).argmax(1))
        assert row["adversarial_linf"] <= 0.1 + 1e-6
        if row["fisher_l2"] is None:
            continue
        assert row["fisher"] != row["label"]
        # an independent walk along ±v1 in steps of 0.002: the first class change
        v1 = input_fisher(digits_cnn, x, k=1).eigenvectors[0, 0]
        v1 = v1 / v1.norm()
        steps = torch.arange(1, 2001, dtype=torch.float32) * 0.002
        first = math.inf
        for sign in (1.0, -1.0):
            with torch.no_grad():
                classes = digits_cnn(x + sign * steps[:, None, None, None] * v1).argmax(1)
            changed = (classes != row["label"]).nonzero()
            if changed.numel():
                first = min(first, float(steps[changed[0, 0]]))
        assert row["fisher_l2"] == pytest.approx(first, abs=0.01)
        checked += 1
    assert checked >= 3
    assert section["fisher_l2"] == pytest.approx(
        float(torch.tensor([r["fisher_l2"] for r in section["rows"] if r["fisher_l2"]]).median())
    )


def test_every_stage_writes_its_figure_and_the_report(digits_cnn, digits_test, tmp_path):
    record = audit(
        digits_cnn, digits_test.take(30), model_name="cnn", quick=True, out=tmp_path, **SMALL
    ).to_dict()
    assert record["settings"]["stages"] == default_stages(digits_cnn)
    assert default_stages(digits_cnn) == [s for s in STAGES if s not in ("detect", "rg")]
    assert list(STAGES) == [
        "linf",
        "l2",
        "certified",
        "minimal",
        "spectra",
        "amplification",
        "dangerous",
        "beyond-lp",
        "explain",
        "detect",
        "rg",
    ]
    assert set(record["figures"]) == {
        "robust_accuracy",
        "certified_accuracy",
        "minimal_perturbations",
        "spectra",
        "amplification",
        "dangerous",
        "beyond_lp",
        "explain",
    }
    for name in record["figures"].values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(record))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(record["figures"])
    assert not (tmp_path / ".checkpoint").exists()
    assert record["settings"]["quick"] and record["data"]["samples"] == 30
    assert record["settings"]["attacks"] == ["APGD-CE", "APGD-DLR"]
    amplification = record["amplification"]
    assert amplification["blocks"][0] == "conv1" and len(amplification["growth_fisher_median"]) == (
        len(amplification["blocks"])
    )


def test_the_same_seed_gives_the_same_record(digits_cnn, digits_test):
    options = {
        "model_name": "cnn",
        "quick": True,
        "seed": 5,
        **SMALL,
        "stages": ["linf", "minimal", "spectra", "dangerous"],
    }
    first = audit(digits_cnn, digits_test.take(24), **options).to_dict()
    second = audit(digits_cnn, digits_test.take(24), **options).to_dict()
    assert without_clock(first) == without_clock(second)


def test_rg_stage_on_a_deep_rbm(tmp_path):
    from vulnscope.rbm.pretrained import binarized_digits, pretrained_deep_rbm

    network = pretrained_deep_rbm(depth=3, width=8, seed=0)
    assert default_stages(network)[-1] == "rg"
    record = audit(
        network,
        binarized_digits("test").take(12),
        model_name="rbm",
        stages=["rg"],
        quick=True,
        geometry_samples=4,
        out=tmp_path,
    ).to_dict()
    rg = record["rg"]
    assert record["model"]["kind"] == "deep RBM"
    assert rg["depth"] == 3 and rg["widths"] == [64, 8, 8]
    layers = rg["summary"]["layers"]
    assert [row["layer"] for row in layers] == [2, 3]
    expected = [
        row["layer"] for row in layers if row["kind"] == "eigenvalue" and row["leading_mean"] > 1
    ]
    assert rg["relevant_layers"] == expected
    assert {"rg_layers", "rg_directions"} <= set(record["figures"])
    assert "RG analysis" in record["verdict"]["text"]


def test_model_with_too_few_outputs_is_refused():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 3]), 4, "test")
    with pytest.raises(ModelError, match="the model has 3 outputs but the data has 4 classes"):
        audit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), data, model_name="m")


@pytest.mark.parametrize(
    ("options", "pieces"),
    [
        ({}, 9),  # linf, l2, certified and minimal in one chunk each, five geometry stages
        ({"batch_size": 100}, 4 * 4 + 5),
        ({"batch_size": None}, 9),
        ({"quick": True, "batch_size": 40}, 4 * 3 + 5),  # --quick keeps 100 samples
        ({"stages": ["l2", "spectra"], "batch_size": 99}, 5 + 1),
    ],
)
def test_audit_pieces_counts_what_a_sharded_audit_shares_out(
    digits_cnn, digits_test, options, pieces
):
    assert len(digits_test) == 397
    assert audit_pieces(digits_cnn, digits_test, **options) == pieces


def test_audit_pieces_checks_what_the_audit_checks_first():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 3]), 4, "test")
    narrow = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ModelError, match="the model has 3 outputs but the data has 4 classes"):
        audit_pieces(narrow, data)
    with pytest.raises(ModelError, match=r"cannot process inputs of shape \(1, 2, 2\)"):
        audit_pieces(torch.nn.Linear(9, 4), data)
    with pytest.raises(InvalidArgumentError, match="stages: unknown stage 'bogus'"):
        audit_pieces(narrow, data, stages=["bogus"])
    with pytest.raises(InvalidArgumentError, match="batch_size must be an integer >= 1"):
        audit_pieces(narrow, data, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="device: expected a torch device"):
        audit_pieces(narrow, data, device="not-a-device")


def test_empty_data_is_refused_before_anything_runs():
    data = ImageData(torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), 2, "empty.npz")
    with pytest.raises(InvalidArgumentError, match=r"data: expected at least one sample, got none"):
        audit(lambda x: x.flatten(1)[:, :2], data, model_name="m")


def test_model_returning_a_vector_is_refused():
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 2, "test")
    with pytest.raises(
        ModelError, match=r"the model must return logits of shape \(N, C\) = \(1, C\)"
    ):
        audit(lambda x: x.flatten(1).sum(1), data, model_name="m")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stages": ["linf", "fourier"]}, "stages: unknown stage 'fourier'; choose from linf, l2"),
        ({"stages": []}, "stages must be a non-empty list"),
        ({"stages": ["l2", "l2"]}, "stages: a stage is listed twice"),
        ({"stages": ["rg"]}, "stages: 'rg' needs a deep RBM network"),
        ({"stages": ["amplification"]}, "'amplification' needs an nn.Module"),
        ({"epsilons": {"l3": [0.1]}}, "epsilons: expected budgets for 'linf' and/or 'l2', got"),
        ({"epsilons": {"l2": [-1.0]}}, "epsilons\\['l2'\\]"),
        ({"device": "gpu9"}, "device: expected a torch device such as 'cpu'"),
        ({"geometry_samples": 0}, "geometry_samples"),
    ],
)
def test_bad_settings_name_the_argument(options, message):
    data = ImageData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 2, "test")
    with pytest.raises(InvalidArgumentError, match=message):
        audit(lambda x: x.flatten(1)[:, :2], data, model_name="m", **options)


def _curve(norm, epsilons, accuracy, fired=()):  # type: ignore[no-untyped-def]
    evaluations = [
        Evaluation(norm, eps, a, 1.0, {}, [], {name: True for name in fired}, [])
        for eps, a in zip(epsilons, accuracy, strict=True)
        if eps > 0
    ]
    return Robustness(list(epsilons), list(accuracy), evaluations, {}, norm=norm)


@pytest.mark.parametrize(("robust", "level"), [(0.3, "high"), (0.6, "moderate"), (0.89, "low")])
def test_verdict_level_follows_the_kept_fraction_at_the_middle_budget(robust, level):
    # clean 0.9; the middle of three budgets decides: kept = robust / 0.9
    result = verdict(0.9, {"linf": _curve("linf", [0.0, 0.1, 0.2, 0.3], [0.9, 0.9, robust, 0.0])})
    assert result.level == level
    assert result.headline.startswith(level.capitalize())
    assert "ε = 0.2" in result.headline and f"{100 * robust:.1f}%" in result.headline


def test_verdict_names_the_worst_norm_masking_and_what_to_try():
    stages = registered_stages()
    minimal = stages["minimal"].decode_result(
        {
            "norm": "l2",
            "attacks": ["DeepFool"],
            "n": 4,
            "n_clean_correct": 4,
            "n_not_found": 0,
            "median": 0.5,
            "mean_found": 0.5,
            "quantiles": {},
            "found_by": {},
            "histogram": {"counts": [], "edges": []},
            "input_l2_median": 5.0,
        }
    )
    rg = dataclasses.replace(_RG, relevant_layers=[2, 3])
    results = {
        "linf": _curve("linf", [0.1], [0.95]),
        "l2": _curve("l2", [0.5], [0.2], fired=["gradients"]),
        "minimal": minimal,
        "rg": rg,
    }
    result = verdict(1.0, results)
    assert result.level == "high" and "L2 ε = 0.5" in result.headline
    assert "At L∞ ε = 0.1 it is 95.0%." in result.text
    assert "at most 0.5 (10.0% of a typical input's norm)" in result.text
    assert "masking checks fired (gradients)" in result.text
    assert "layers 2, 3" in result.text and "vulnscope defend --method pgd" in result.text
    assert verdict(0.9, {}).level == "unknown"


def _validator():  # type: ignore[no-untyped-def]
    import jsonschema

    schema = results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_audit_records_validate_against_the_shipped_schema(digits_cnn, digits_test, tmp_path):
    validator = _validator()
    records = [
        audit(
            digits_cnn, digits_test.take(20), model_name="<cnn>", quick=True, out=tmp_path, **SMALL
        ).to_dict(),
        audit(
            digits_cnn,
            digits_test.take(20),
            model_name="cnn",
            stages=["l2"],
            epsilons={"l2": [0.0, 0.5]},
            attacks=["apgd-ce", "fgsm"],
        ).to_dict(),
    ]
    for record in records:
        record = json.loads(json.dumps(record))  # exactly what results.json holds
        assert record["schema_version"] == SCHEMA_VERSION == 3
        assert sorted(validator.iter_errors(record), key=str) == []
    record = json.loads(json.dumps(records[0]))
    # a schema that accepts anything would let each of these through
    curve = record["robustness"]["linf"]
    broken = [
        {k: v for k, v in record.items() if k != "clean_accuracy"},
        {**record, "schema_version": SCHEMA_VERSION + 1},
        {**record, "clean_accuracy": 1.5},
        {**record, "settings": {**record["settings"], "stages": ["linf", "l3"]}},
        {**record, "unexpected": 1},
        {
            **record,
            "robustness": {
                "linf": {
                    **curve,
                    "evaluations": [{**curve["evaluations"][0], "broken_by": {"APGD-CE": -1}}],
                }
            },
        },
        {**record, "created": "yesterday"},
        {**record, "verdict": {**record["verdict"], "level": "catastrophic"}},
        {**record, "figures": {"spectra": "../../etc/passwd"}},
    ]
    for bad in broken:
        assert list(validator.iter_errors(bad)), bad


def test_progress_bars_advance_chunk_by_chunk_on_stderr(digits_cnn, digits_test, capsys):
    audit(
        digits_cnn,
        digits_test.take(12),
        model_name="cnn",
        quick=True,
        batch_size=5,
        stages=["linf", "minimal", "spectra"],
        epsilons={"linf": [0.05, 0.1]},
        geometry_samples=4,
        progress=True,
    )
    err = capsys.readouterr().err
    assert "linf: 100%" in err and "6/6" in err  # 3 chunks of up to 5 samples, 2 budgets
    assert "linf:  17%" in err  # the bar moves within a chunk, budget by budget
    assert "minimal: 100%" in err and "3/3" in err
    assert "spectra: 100%" in err and "1/1" in err
    audit(
        digits_cnn,
        digits_test.take(12),
        model_name="cnn",
        stages=["spectra"],
        geometry_samples=4,
        progress=False,
    )
    assert capsys.readouterr().err == ""


class _ReverseModeReLU(torch.autograd.Function):
    """A ReLU with a backward but no forward-mode rule (no Jacobian-vector products)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x.relu()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _Custom(torch.nn.Module):
    def forward(self, x):  # type: ignore[no-untyped-def]
        return _ReverseModeReLU.apply(x)


def test_a_stage_the_model_cannot_take_is_skipped_with_a_warning(digits_test, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), _Custom(), torch.nn.Linear(32, 10)
    ).eval()
    record = audit(
        model,
        digits_test.take(20),
        model_name="custom",
        quick=True,
        stages=["linf", "amplification", "dangerous"],
        out=tmp_path,
        **SMALL,
    ).to_dict()
    assert "amplification" not in record and "amplification" not in record["figures"]
    assert "linf" in record["robustness"] and "dangerous" in record
    assert any(
        w.startswith("the amplification stage failed on this model and was skipped: ")
        for w in record["warnings"]
    )
    assert (tmp_path / "report.html").is_file()


def test_without_clock_drops_the_clock_fields_only():
    record = {
        "created": "2026-11-22T00:00:00+00:00",
        "timing": {"total": 3.0},
        "robustness": {"linf": {"accuracy": [0.5], "attack_seconds": {"0.1": {"FGSM": 1.0}}}},
        "evaluations": [{"eps": 0.1, "timing": 1}],
    }
    assert without_clock(record) == {
        "robustness": {"linf": {"accuracy": [0.5]}},
        "evaluations": [{"eps": 0.1}],
    }
    assert record["timing"] == {"total": 3.0}  # the record itself is left as it was
