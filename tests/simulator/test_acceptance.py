"""Acceptance models: per-request outcome streams, their statistics, and replay traces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from simulator.acceptance import AcceptanceModel, ReplayTraces, _next_reject, sample_confidence
from simulator.acceptance_spec import (
    BetaConfidence,
    CalibratedAcceptance,
    ConstantConfidence,
    HistogramConfidence,
    HmmAcceptance,
    IIDAcceptance,
    PowerCurve,
    ReplayAcceptance,
    TableCurve,
)
from simulator.errors import ConfigError

HERE = Path(__file__).resolve().parent

HMM = HmmAcceptance(
    kind="hmm",
    edges=[0.0, 0.5, 1.0],
    within=[[0.05, 0.3, 0.5], [0.5, 0.9, 1.0]],
    initial=[0.5, 0.5],
    transition=[[0.8, 0.2], [0.1, 0.9]],
    emission=[[[0.6, 0.1], [0.2, 0.1]], [[0.05, 0.05], [0.1, 0.8]]],
)
"""A two-regime acceptance model (hard, easy)."""


def iid(rate: float, confidence=None) -> AcceptanceModel:
    spec = IIDAcceptance(
        kind="iid", rate=rate, **({"confidence": confidence} if confidence else {})
    )
    return AcceptanceModel(spec, HERE)


def calibrated(a: float, b: float, exponent: float = 1.0) -> AcceptanceModel:
    spec = CalibratedAcceptance(
        kind="calibrated",
        confidence=BetaConfidence(kind="beta", a=a, b=b),
        p_accept=PowerCurve(kind="power", exponent=exponent),
    )
    return AcceptanceModel(spec, HERE)


def reference_next_reject(accepted: list[bool]) -> list[int]:
    n = len(accepted)
    return [next((q for q in range(p, n) if not accepted[q]), n) for p in range(n)]


# -- next_reject ---------------------------------------------------------------------------------


@given(accepted=arrays(np.bool_, st.integers(0, 200)))
def test_next_reject_is_first_rejection_at_or_after(accepted: np.ndarray) -> None:
    result = _next_reject(accepted)
    n = len(accepted)
    assert len(result) == n
    assert result == reference_next_reject(accepted.tolist())
    for p, q in enumerate(result):
        assert p <= q <= n
        assert bool(accepted[p:q].all())
        assert q == n or not accepted[q]
        assert all(type(value) is int for value in result)


@given(rate=st.floats(0.0, 0.99), seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_stream_next_reject_matches_its_accepted_flags(rate: float, seed: int, n: int) -> None:
    stream = iid(rate).stream(seed, 0, 3, n)
    assert stream.next_reject == reference_next_reject(stream.accepted.tolist())
    assert len(stream.confidence) == len(stream.off_path_confidence) == n


# -- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.8, 0.95])
def test_iid_acceptance_rate_within_three_sigma(rate: float) -> None:
    model = iid(rate)
    accepted = np.concatenate([model.stream(11, 0, r, 2000).accepted for r in range(20)])
    n = accepted.size
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(accepted.mean() - rate) <= 3 * sigma + 1e-12


def test_iid_ignores_confidence() -> None:
    low = ConstantConfidence(kind="constant", value=0.05)
    stream = iid(0.9, low).stream(0, 0, 0, 20000)
    assert set(stream.confidence) == {0.05}
    assert abs(stream.accepted.mean() - 0.9) <= 3 * math.sqrt(0.09 / 20000)


@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (8.0, 2.0), (2.0, 5.0), (0.5, 0.5)])
def test_calibrated_power_one_rate_is_beta_mean(a: float, b: float) -> None:
    model = calibrated(a, b, 1.0)
    accepted = np.concatenate([model.stream(5, 0, r, 2000).accepted for r in range(20)])
    mean = a / (a + b)
    sigma = math.sqrt(mean * (1 - mean) / accepted.size)
    assert abs(accepted.mean() - mean) <= 4 * sigma


def test_calibrated_acceptance_follows_confidence() -> None:
    stream = calibrated(2.0, 2.0).stream(1, 0, 0, 40000)
    confidence = np.asarray(stream.confidence)
    high, low = stream.accepted[confidence > 0.8], stream.accepted[confidence < 0.2]
    assert high.mean() > 0.8 and low.mean() < 0.2


def test_table_curve_acceptance() -> None:
    spec = CalibratedAcceptance(
        kind="calibrated",
        confidence=HistogramConfidence(kind="histogram", edges=[0.0, 0.5, 1.0], weights=[1, 1]),
        p_accept=TableCurve(kind="table", edges=[0.0, 0.5, 1.0], values=[0.0, 1.0]),
    )
    stream = AcceptanceModel(spec, HERE).stream(2, 0, 0, 5000)
    confidence = np.asarray(stream.confidence)
    assert np.array_equal(stream.accepted, confidence >= 0.5)


# -- common random numbers -----------------------------------------------------------------------


MODELS = {
    "iid": lambda: iid(0.7, BetaConfidence(kind="beta", a=3.0, b=1.0)),
    "calibrated": lambda: calibrated(4.0, 1.5, 1.3),
    "hmm": lambda: AcceptanceModel(HMM, HERE),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_streams_depend_only_on_seed_edge_and_request(make) -> None:
    first, second = make(), make()
    a = first.stream(3, 1, 7, 500)
    b = second.stream(3, 1, 7, 500)
    assert a.confidence == b.confidence
    assert np.array_equal(a.accepted, b.accepted)
    assert a.next_reject == b.next_reject
    assert a.off_path_confidence == b.off_path_confidence
    for other in (
        first.stream(3, 1, 8, 500),
        first.stream(4, 1, 7, 500),
        first.stream(3, 2, 7, 500),
    ):
        assert other.confidence != a.confidence
        assert not np.array_equal(other.accepted, a.accepted)
    # asking for other streams in between changes nothing
    again = first.stream(3, 1, 7, 500)
    assert again.confidence == a.confidence


CONFIDENCES = [
    BetaConfidence(kind="beta", a=0.05, b=0.05),
    BetaConfidence(kind="beta", a=50.0, b=0.01),
    BetaConfidence(kind="beta", a=0.01, b=50.0),
    HistogramConfidence(kind="histogram", edges=[0.0, 0.1, 1.0], weights=[3.0, 0.0]),
    HistogramConfidence(kind="histogram", edges=[0.0, 0.3, 0.9, 1.0], weights=[0.0, 1.0, 2.0]),
    ConstantConfidence(kind="constant", value=1.0),
    ConstantConfidence(kind="constant", value=1e-9),
]


@pytest.mark.parametrize("spec", CONFIDENCES)
def test_confidences_lie_in_zero_one(spec) -> None:
    values = sample_confidence(spec, np.random.default_rng(0), 5000)
    assert np.all(values > 0.0) and np.all(values <= 1.0)
    stream = iid(0.5, spec).stream(0, 0, 0, 2000)
    for sample in (stream.confidence, stream.off_path_confidence):
        array = np.asarray(sample)
        assert np.all(array > 0.0) and np.all(array <= 1.0)


def test_histogram_confidence_stays_in_weighted_bins() -> None:
    spec = HistogramConfidence(kind="histogram", edges=[0.0, 0.3, 0.9, 1.0], weights=[0, 1, 3])
    values = sample_confidence(spec, np.random.default_rng(1), 20000)
    assert np.all(values >= 0.3)
    assert abs(np.mean(values >= 0.9) - 0.75) < 0.02


# -- replay traces -------------------------------------------------------------------------------


REPLAY_ROWS = [
    # sequence, position, confidence, accepted (shuffled on purpose)
    ("1", 1, 0.6, "0"),
    ("0", 2, 0.3, "false"),
    ("0", 0, 0.9, "1"),
    ("2", 0, 0.7, "True"),
    ("1", 0, 0.8, "true"),
    ("0", 1, 0.5, "True"),
    ("2", 1, 0.2, "False"),
]


def write_replay(
    path: Path, rows=REPLAY_ROWS, header: str = "sequence,position,confidence,accepted"
):
    lines = [header, *(",".join(str(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_trace_round_trip(tmp_path: Path) -> None:
    traces = ReplayTraces.load(write_replay(tmp_path / "replay.csv"))
    assert len(traces.sequences) == 3
    (c0, a0), (c1, a1), (c2, a2) = traces.sequences
    assert c0.tolist() == [0.9, 0.5, 0.3] and a0.tolist() == [True, True, False]
    assert c1.tolist() == [0.8, 0.6] and a1.tolist() == [True, False]
    assert c2.tolist() == [0.7, 0.2] and a2.tolist() == [True, False]
    assert a0.dtype == bool and c0.dtype == float


def test_replay_take_wraps_across_sequences(tmp_path: Path) -> None:
    traces = ReplayTraces.load(write_replay(tmp_path / "replay.csv"))
    confidence, accepted = traces.take(1, 9)
    assert confidence.tolist() == [0.8, 0.6, 0.7, 0.2, 0.9, 0.5, 0.3, 0.8, 0.6]
    assert accepted.tolist() == [True, False, True, False, True, True, False, True, False]
    confidence, _ = traces.take(2, 1)
    assert confidence.tolist() == [0.7]
    confidence, _ = traces.take(5, 3)  # start indices wrap too
    assert confidence.tolist() == [0.7, 0.2, 0.9]


def test_replay_stream_reads_from_the_trace(tmp_path: Path) -> None:
    write_replay(tmp_path / "replay.csv")
    model = AcceptanceModel(ReplayAcceptance(kind="replay", trace="replay.csv"), tmp_path)
    traces = ReplayTraces.load(tmp_path / "replay.csv")
    stream = model.stream(0, 0, 0, 20)
    starts = [s for s in range(3) if traces.take(s, 20)[0].tolist() == stream.confidence]
    assert len(starts) == 1
    assert stream.accepted.tolist() == traces.take(starts[0], 20)[1].tolist()
    assert sorted(stream.off_path_confidence) == sorted(stream.confidence)
    assert stream.next_reject == reference_next_reject(stream.accepted.tolist())
    assert model.stream(0, 0, 0, 20).confidence == stream.confidence


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("sequence,position,confidence", [("0", 0, 0.5)]),
        ("sequence,position,confidence,accepted", []),
        ("sequence,position,confidence,accepted", [("0", "x", 0.5, "1")]),
        ("sequence,position,confidence,accepted", [("0", 0, "high", "1")]),
        ("sequence,position,confidence,accepted", [("0", 0, 1.5, "1")]),
        ("sequence,position,confidence,accepted", [("0", 0, -0.1, "1")]),
        ("sequence,position,confidence,accepted", [("0", 0, 0.5, "yes")]),
        ("sequence,position,confidence,accepted", [("0", 0.5, 0.5, "1")]),
        ("sequence,position,confidence,accepted", [("0", 0)]),
    ],
)
def test_replay_bad_rows_raise_config_error(tmp_path: Path, header: str, rows) -> None:
    path = write_replay(tmp_path / "bad.csv", rows, header)
    with pytest.raises(ConfigError) as info:
        ReplayTraces.load(path)
    assert str(path) in str(info.value)


def test_replay_missing_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ReplayTraces.load(tmp_path / "absent.csv")
    with pytest.raises(ConfigError):
        AcceptanceModel(ReplayAcceptance(kind="replay", trace="absent.csv"), tmp_path)


def test_hmm_stream_follows_its_bins_and_regimes() -> None:
    model = AcceptanceModel(HMM, HERE)
    streams = [model.stream(0, 0, r, 400) for r in range(50)]
    conf = np.concatenate([s.confidence for s in streams])
    acc = np.concatenate([s.accepted for s in streams])
    assert np.all(conf > 0.0) and np.all(conf <= 1.0)
    off = np.concatenate([s.off_path_confidence for s in streams])
    assert np.all(off > 0.0) and np.all(off <= 1.0) and len(off) == len(conf)
    # stationary (1/3, 2/3): P(accept) = 0.2/3 + 0.85 * 2/3
    assert acc.mean() == pytest.approx(0.2 / 3 + 0.85 * 2 / 3, abs=0.02)
    low = conf <= 0.5
    assert acc[low].mean() < 0.4 < 0.8 < acc[~low].mean()
    prev, nxt = acc[:-1], acc[1:]
    assert nxt[prev].mean() > nxt[~prev].mean() + 0.2  # runs
    for s in streams[:5]:
        assert s.next_reject == _next_reject(np.asarray(s.accepted))


def test_hmm_with_sequence_lengths_starts_each_sequence_from_the_initial_regime() -> None:
    """A request runs on past a drawn length as a new sequence from `initial`: here a first
    regime that emits (easy bin, accepted) once and hands over to an absorbing rejecting one,
    so with lengths [5] exactly positions 0, 5, 10 are accepted; without lengths only 0."""
    spec = HmmAcceptance(
        kind="hmm",
        edges=[0.0, 0.5, 1.0],
        within=[[0.1, 0.2], [0.8, 0.9]],
        initial=[1.0, 0.0],
        transition=[[0.0, 1.0], [0.0, 1.0]],
        emission=[[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]],
        sequence_lengths=[5],
    )
    stream = AcceptanceModel(spec, HERE).stream(3, 0, 1, 12)
    assert np.flatnonzero(stream.accepted).tolist() == [0, 5, 10]
    assert all((c >= 0.8) == a for c, a in zip(stream.confidence, stream.accepted, strict=True))
    one = AcceptanceModel(spec.model_copy(update={"sequence_lengths": None}), HERE)
    assert np.flatnonzero(one.stream(3, 0, 1, 12).accepted).tolist() == [0]
    with pytest.raises(ValueError):
        HmmAcceptance.model_validate({**spec.model_dump(), "sequence_lengths": [0]})
    with pytest.raises(ValueError):
        HmmAcceptance.model_validate({**spec.model_dump(), "sequence_lengths": []})
