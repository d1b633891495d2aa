"""The evaluations' pieces: one typed chunk result per kind, an exact JSON round trip, and
one merge whose result does not depend on how the chunks were spread over processes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vulnscope.evaluate._chunks as chunk_loop
from helpers import random_inputs, tiny_classifier
from vulnscope.attacks import FAB, PGD, DeepFool, Square
from vulnscope.errors import InvalidArgumentError
from vulnscope.evaluate import (
    CascadeBudget,
    CascadeChunk,
    MaskingSymptoms,
    MinimalChunk,
    cascade_chunk,
    merge_cascade_chunks,
    merge_minimal_chunks,
    minimal_chunk,
    minimal_perturbations,
    robust_accuracy,
    standard_evaluation,
    standard_evaluation_curve,
)
from vulnscope.evaluate.masking import check_gradients
from vulnscope.evaluate.pieces import StageReport

SHAPE = (1, 3, 3)
CHUNK = 3
EPSILONS = [0.2, 0.05]
ATTACKS = ["apgd-ce", Square(queries=60, seed=1)]  # white-box, then black-box: every check


def _problem():
    model = tiny_classifier(3, SHAPE, classes=4).eval()
    x = random_inputs(3, 10, SHAPE, (0.0, 1.0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # a clean mistake
    return model, x, y


def _to_json_and_back(data):
    return json.loads(json.dumps(data, allow_nan=False))


# --- the JSON round trip is exact ---------------------------------------------------------

_names = st.text(max_size=6)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_count = st.integers(0, 2**53)


@st.composite
def _cascade_chunks(draw):
    size = draw(st.integers(1, 5))
    attacks = draw(st.lists(_names, min_size=1, max_size=3))
    flags = st.lists(st.booleans(), min_size=size, max_size=size).map(tuple)
    stage = st.builds(StageReport, _names, _count, _count, _count, _count, _finite)
    budgets = []
    for _ in range(draw(st.integers(0, 3))):
        single_step = draw(st.booleans())
        budgets.append(
            CascadeBudget(
                eps=draw(_finite),
                broken_by=tuple(draw(st.lists(st.none() | _names, min_size=size, max_size=size))),
                robust=draw(flags),
                stages=tuple(draw(stage) for _ in attacks),
                single_step_broken=draw(flags) if single_step else None,
                single_step_attacked=draw(flags) if single_step else None,
            )
        )
    symptoms = st.builds(MaskingSymptoms, st.booleans(), st.booleans(), _count, _count, _count)
    return CascadeChunk(
        norm=draw(_names),
        attacks=tuple(attacks),
        black_box=tuple(draw(st.booleans()) for _ in attacks),
        samples=size,
        correct=draw(st.integers(0, size)),
        symptoms=draw(symptoms),
        budgets=tuple(budgets),
        seconds=draw(_finite),
    )


@given(_cascade_chunks())
@settings(max_examples=60, deadline=None)
def test_a_cascade_chunk_survives_json_exactly(chunk):
    assert CascadeChunk.from_json(_to_json_and_back(chunk.to_json())) == chunk


@given(
    st.integers(1, 6).flatmap(
        lambda size: st.builds(
            MinimalChunk,
            norm=_names,
            attacks=st.lists(_names, max_size=3).map(tuple),
            norms=st.lists(
                st.floats(min_value=0.0, allow_nan=False), min_size=size, max_size=size
            ).map(tuple),
            found_by=st.lists(st.none() | _names, min_size=size, max_size=size).map(tuple),
            clean_correct=st.lists(st.booleans(), min_size=size, max_size=size).map(tuple),
            seconds=_finite,
        )
    )
)
@settings(max_examples=60, deadline=None)
def test_a_minimal_chunk_survives_json_exactly_infinities_included(chunk):
    assert MinimalChunk.from_json(_to_json_and_back(chunk.to_json())) == chunk


# --- chunks read back from JSON merge into the in-memory evaluation ------------------------


def test_cascade_chunks_from_json_merge_into_the_evaluation_the_function_returns():
    model, x, y = _problem()
    curve = standard_evaluation_curve(
        model, x, y, epsilons=EPSILONS, attacks=ATTACKS, batch_size=CHUNK
    )
    chunks = [
        cascade_chunk(model, x[i : i + CHUNK], y[i : i + CHUNK], epsilons=EPSILONS, attacks=ATTACKS)
        for i in range(0, len(x), CHUNK)
    ]
    in_memory = merge_cascade_chunks(chunks)
    from_json = merge_cascade_chunks(
        [CascadeChunk.from_json(_to_json_and_back(chunk.to_json())) for chunk in chunks]
    )
    assert in_memory.to_dict() == from_json.to_dict() == curve.to_dict()
    assert torch.equal(from_json.accuracy, curve.accuracy)
    for merged, expected, direct in zip(
        from_json.evaluations, curve.evaluations, in_memory.evaluations, strict=True
    ):
        assert merged.x_adv is None  # a checkpoint keeps no examples, and says so
        assert torch.equal(direct.x_adv, expected.x_adv)
        assert torch.equal(merged.robust, expected.robust)
        assert merged.broken_by == expected.broken_by
        assert merged.checks == expected.checks
    assert {"black_box_beats_white_box", "single_step_beats_iterative"} <= {
        check.name for check in curve.evaluations[0].checks
    }


def test_minimal_chunks_from_json_merge_into_the_distribution_the_function_returns():
    model, x, y = _problem()
    attacks = [DeepFool(norm="l2", steps=20), FAB(norm="l2", steps=5, seed=2)]
    whole = minimal_perturbations(model, x, y, attacks=attacks, batch_size=CHUNK)
    chunks = [
        minimal_chunk(model, x[i : i + CHUNK], y[i : i + CHUNK], attacks=attacks)
        for i in range(0, len(x), CHUNK)
    ]
    read = [MinimalChunk.from_json(_to_json_and_back(chunk.to_json())) for chunk in chunks]
    merged = merge_minimal_chunks(read)
    assert merged.to_dict() == whole.to_dict()
    assert torch.equal(merged.norms, whole.norms) and merged.found_by == whole.found_by
    assert merged.x_adv is None
    assert torch.equal(merge_minimal_chunks(chunks).x_adv, whole.x_adv)


# --- the merge is the same however the chunks are spread over ranks ------------------------


class _Ranks:
    """Stands in for :class:`Sharding`: this process plays rank ``rank`` of ``world``.

    With ``rank=None`` it computes every chunk and records each piece's bytes as the
    exchange would send them; as a rank it computes its own share and receives the other
    ranks' pieces from that record, through the same bytes.
    """

    def __init__(self, world, rank=None, sent=None):
        self.world, self.rank, self.sent = world, rank, sent if sent is not None else {}

    def __call__(self, count, *, shard, device):
        self.count = count
        start, step = (0, 1) if self.rank is None else (self.rank, self.world)
        self.pieces = list(range(start, count, step))
        return self

    def exchange(self, mine):
        if self.rank is None:
            self.sent.update(mine)
        return [mine.get(k, self.sent.get(k)) for k in range(self.count)]


def _runs():
    model, x, y = _problem()
    return {
        "standard_evaluation_curve": lambda: standard_evaluation_curve(
            model, x, y, epsilons=EPSILONS, attacks=ATTACKS, batch_size=CHUNK
        ),
        "minimal_perturbations": lambda: minimal_perturbations(
            model,
            x,
            y,
            attacks=[DeepFool(norm="l2", steps=20), FAB(norm="l2", steps=5, seed=2)],
            batch_size=CHUNK,
        ),
        "robust_accuracy": lambda: robust_accuracy(
            model, x, y, attack=PGD(steps=5), epsilons=[0.0, *EPSILONS], batch_size=CHUNK
        ),
    }


def _fields(result):
    """Every field of a result: its JSON summary, then each tensor (x_adv, norms...)."""
    out = {"summary": result.to_dict()}
    for position, part in enumerate([result, *getattr(result, "evaluations", ())]):
        for name, value in vars(part).items():
            if isinstance(value, torch.Tensor) or name == "broken_by" or name == "found_by":
                out[f"{position}.{name}"] = value
    return out


@pytest.mark.parametrize("function", sorted(_runs()))
def test_every_rank_of_any_world_merges_to_the_one_process_result(function, monkeypatch):
    run = _runs()[function]
    alone = _fields(run())
    for world in (2, 3):
        recorder = _Ranks(world)
        monkeypatch.setattr(chunk_loop, "Sharding", recorder)
        run()  # records every chunk's bytes, as the ranks would send them
        for rank in range(world):
            monkeypatch.setattr(chunk_loop, "Sharding", _Ranks(world, rank, recorder.sent))
            shared = _fields(run())
            assert shared["summary"] == alone["summary"], (world, rank)
            assert shared.keys() == alone.keys()
            for name, value in alone.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(shared[name], value), (world, rank, name)
                    assert shared[name].dtype == value.dtype
                else:
                    assert shared[name] == value, (world, rank, name)


# --- one rule for the masking checks: per chunk, merged ------------------------------------


class _Quantised(nn.Module):
    """Inputs rounded to a grid: zero input gradients almost everywhere."""

    def __init__(self):
        super().__init__()
        self.linear = tiny_classifier(7, SHAPE, classes=4)

    def forward(self, x):
        return self.linear(torch.round(x * 4) / 4)


def test_the_gradient_check_counts_over_all_chunks_and_says_so_once():
    model = _Quantised().eval()
    x = random_inputs(7, 10, SHAPE, (0.0, 1.0))
    y = model(x).argmax(1)
    report = standard_evaluation(model, x, y, eps=0.1, attacks=["apgd-ce"], batch_size=3)
    whole = check_gradients(model, x, y, torch.ones(10, dtype=torch.bool))
    assert whole.triggered and "10 correctly classified points" in whole.message
    assert [w for w in report.warnings if "gradient" in w] == [whole.message]


def test_probability_outputs_seen_in_any_chunk_are_reported_once():
    softmax = nn.Sequential(tiny_classifier(8, SHAPE, classes=4), nn.Softmax(dim=1)).eval()
    x = random_inputs(8, 7, SHAPE, (0.0, 1.0))
    y = softmax(x).argmax(1)
    report = standard_evaluation(softmax, x, y, eps=0.05, attacks=["apgd-ce"], batch_size=2)
    assert sum("look like probabilities" in w for w in report.warnings) == 1


# --- errors ---------------------------------------------------------------------------------


def test_bad_pieces_and_mixed_merges_are_named():
    model, x, y = _problem()
    chunk = cascade_chunk(model, x[:3], y[:3], epsilons=[0.1], attacks=["apgd-ce"])
    other = cascade_chunk(model, x[3:6], y[3:6], epsilons=[0.2], attacks=["apgd-ce"])
    with pytest.raises(InvalidArgumentError, match=r"chunks\[1\]\.epsilons is \(0\.2,\)"):
        merge_cascade_chunks([chunk, other])
    with pytest.raises(InvalidArgumentError, match="at least one CascadeChunk"):
        merge_cascade_chunks([])
    with pytest.raises(InvalidArgumentError, match="CascadeChunk's to_json"):
        CascadeChunk.from_json({"norm": "linf"})
    with pytest.raises(InvalidArgumentError, match=r"one x_adv per budget \(1\), got 2"):
        CascadeChunk.from_json(chunk.to_json(), (x[:3], x[:3]))
    with pytest.raises(InvalidArgumentError, match="MinimalChunk's to_json"):
        MinimalChunk.from_json({"norms": [1.0]})
    minimal = minimal_chunk(model, x[:3], y[:3])
    fab = minimal_chunk(model, x[3:6], y[3:6], attacks=FAB(norm="l2", steps=2))
    with pytest.raises(InvalidArgumentError, match=r"chunks\[1\] has norm 'l2' and attacks"):
        merge_minimal_chunks([minimal, fab])
    with pytest.raises(InvalidArgumentError, match="epsilons must be > 0"):
        cascade_chunk(model, x[:3], y[:3], epsilons=[0.0])


def test_a_chunk_without_budgets_is_just_its_clean_pass():
    model, x, y = _problem()
    chunk = cascade_chunk(model, x[:4], y[:4], epsilons=[])
    assert chunk.budgets == () and chunk.samples == 4
    assert chunk.correct == int((model(x[:4]).argmax(1) == y[:4]).sum()) == 3
    assert not math.isnan(chunk.seconds)


def test_labels_out_of_range_are_refused_before_any_chunk_runs():
    model, x, y = _problem()
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    y[-1] = 9  # in the last chunk, which under torchrun another rank would run
    with pytest.raises(InvalidArgumentError, match=r"class indices < 4 .* got maximum 9"):
        standard_evaluation(model, x, y, eps=0.1, attacks=["apgd-ce"], batch_size=CHUNK)
    assert seen == [1]  # one point's logits, to count the classes; no chunk ran
