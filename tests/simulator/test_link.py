"""Bandwidth models and the serialised channel."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.errors import ConfigError
from simulator.link import BITS_PER_MEGABIT, Channel, ConstantBandwidth, TraceBandwidth


def bytes_per_s(mbps: float) -> float:
    return mbps * BITS_PER_MEGABIT / 8.0


# -- an independent model of a step trace --------------------------------------------------------


def trace_period(times: list[float]) -> float:
    """The class docstring's period: last time stamp plus the mean step length."""
    if len(times) == 1:
        return math.inf
    return times[-1] + (times[-1] - times[0]) / (len(times) - 1)


def steps_between(
    times: list[float], mbps: list[float], repeat: bool, start: float, end: float
) -> float:
    """Bytes sent between `start` and `end` by walking the steps one by one."""
    period = trace_period(times)
    looping = repeat and len(times) > 1
    total = 0.0
    cycle = math.floor(start / period) if looping else 0
    while True:
        offset = cycle * period if looping else 0.0
        for i, rate in enumerate(mbps):
            step_start = offset + times[i]
            if i + 1 < len(times):
                step_end = offset + times[i + 1]
            else:
                step_end = offset + period if looping else math.inf
            low, high = max(step_start, start), min(step_end, end)
            if high > low:
                total += bytes_per_s(rate) * (high - low)
        if not looping or offset + period >= end:
            return total
        cycle += 1


@st.composite
def step_traces(draw: st.DrawFn, min_steps: int = 2) -> tuple[list[float], list[float]]:
    count = draw(st.integers(min_steps, 6))
    gaps = draw(st.lists(st.floats(0.05, 5.0), min_size=count - 1, max_size=count - 1))
    times = [0.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    rates = draw(st.lists(st.floats(0.5, 100.0), min_size=count, max_size=count))
    return times, rates


# -- ConstantBandwidth ---------------------------------------------------------------------------


@given(mbps=st.floats(0.01, 1e4), start=st.floats(0.0, 1e4), n_bytes=st.floats(0.0, 1e9))
def test_constant_finish_time_is_exact(mbps: float, start: float, n_bytes: float) -> None:
    link = ConstantBandwidth(mbps)
    assert link.finish_time(start, n_bytes) == pytest.approx(
        start + n_bytes * 8.0 / (mbps * 1e6), rel=1e-12
    )
    assert link.at(start) == mbps


def test_constant_finish_time_example() -> None:
    assert ConstantBandwidth(8.0).finish_time(2.0, 1_000_000) == pytest.approx(3.0)
    assert ConstantBandwidth(8.0).finish_time(2.0, 0) == 2.0


# -- TraceBandwidth ------------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    trace=step_traces(),
    repeat=st.booleans(),
    start_fraction=st.floats(0.0, 3.0),
    n_bytes=st.floats(1.0, 5e7),
)
def test_trace_finish_time_inverts_cumulative_bytes(
    trace: tuple[list[float], list[float]], repeat: bool, start_fraction: float, n_bytes: float
) -> None:
    times, rates = trace
    link = TraceBandwidth(times, rates, repeat, "test")
    period = trace_period(times)
    start = start_fraction * (period if math.isfinite(period) else 10.0)
    finish = link.finish_time(start, n_bytes)
    assert finish >= start
    sent = steps_between(times, rates, repeat, start, finish)
    assert sent == pytest.approx(n_bytes, rel=1e-6)


@given(
    trace=step_traces(),
    repeat=st.booleans(),
    start_fraction=st.floats(0.0, 3.0),
    amounts=st.lists(st.floats(0.0, 5e7), min_size=2, max_size=8),
)
def test_trace_finish_time_is_monotone_in_bytes(
    trace: tuple[list[float], list[float]],
    repeat: bool,
    start_fraction: float,
    amounts: list[float],
) -> None:
    times, rates = trace
    link = TraceBandwidth(times, rates, repeat, "test")
    period = trace_period(times)
    start = start_fraction * (period if math.isfinite(period) else 10.0)
    finishes = [link.finish_time(start, amount) for amount in sorted(amounts)]
    assert all(a <= b for a, b in pairwise(finishes))
    assert link.finish_time(start, 0.0) == pytest.approx(start, abs=1e-9)


@given(mbps=st.floats(0.5, 100.0), repeat=st.booleans(), start=st.floats(0.0, 1e3))
def test_single_row_trace_is_a_constant(mbps: float, repeat: bool, start: float) -> None:
    trace = TraceBandwidth([0.0], [mbps], repeat, "one row")
    constant = ConstantBandwidth(mbps)
    for n_bytes in (0.0, 1.0, 1e3, 1e7):
        assert trace.finish_time(start, n_bytes) == pytest.approx(
            constant.finish_time(start, n_bytes), rel=1e-12
        )
    assert trace.at(start) == mbps


def test_trace_examples_repeat_and_hold() -> None:
    # 8 Mbit/s (1 MB/s) for 1 s, then 16 Mbit/s; period = 1 + 1 = 2 s.
    looping = TraceBandwidth([0.0, 1.0], [8.0, 16.0], True, "loop")
    assert looping.period == 2.0
    assert looping.finish_time(0.0, 1_000_000) == pytest.approx(1.0)
    assert looping.finish_time(0.0, 3_000_000) == pytest.approx(2.0)
    assert looping.finish_time(0.0, 4_000_000) == pytest.approx(3.0)
    assert looping.finish_time(0.5, 1_000_000) == pytest.approx(1.25)
    assert looping.at(2.5) == 8.0 and looping.at(3.5) == 16.0
    holding = TraceBandwidth([0.0, 1.0], [8.0, 16.0], False, "hold")
    assert holding.finish_time(0.0, 5_000_000) == pytest.approx(3.0)
    assert holding.at(100.0) == 16.0


@pytest.mark.parametrize("repeat", [True, False])
def test_trace_finish_at_exact_period_boundaries(repeat: bool) -> None:
    times, rates = [0.0, 0.1, 0.3], [3.0, 7.0, 11.0]
    link = TraceBandwidth(times, rates, repeat, "edges")
    period = trace_period(times)
    for cycles in range(1, 40):
        start = cycles * period
        for n_bytes in (1.0, 1e3, 1e5):
            finish = link.finish_time(start, n_bytes)
            assert steps_between(times, rates, repeat, start, finish) == pytest.approx(
                n_bytes, rel=1e-6
            )


def test_single_row_trace_rate_and_flags() -> None:
    """What does work for a one-row trace: it never loops and reads as its only value."""
    trace = TraceBandwidth([0.0], [4.0], True, "one row")
    assert trace.repeat is False
    assert trace.period == math.inf
    assert trace.at(0.0) == trace.at(1e6) == 4.0


def test_single_row_csv_trace_finishes(tmp_path: Path) -> None:
    path = tmp_path / "flat.csv"
    path.write_text("t_s,mbps\n0,8\n")
    link = TraceBandwidth.from_csv(path, repeat=True)
    assert link.finish_time(0.0, 1_000_000) == pytest.approx(1.0)


def test_from_csv_reads_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("t_s,mbps\n0,8\n1.5,16\n4,2.5\n")
    link = TraceBandwidth.from_csv(path, repeat=True)
    assert link.times == [0.0, 1.5, 4.0]
    assert link.mbps == [8.0, 16.0, 2.5]
    assert link.repeat is True
    assert link.source == str(path)
    assert link.at(2.0) == 16.0
    assert link.finish_time(0.0, 1_500_000) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "time,rate\n0,8\n",
        "t_s,mbps\n",
        "t_s,mbps\n0,abc\n",
        "t_s,mbps\n0,0\n",
        "t_s,mbps\n0,-1\n",
        "t_s,mbps\n0,8\n0,9\n",
        "t_s,mbps\n1,8\n",
        "t_s,mbps\n0,inf\n",
    ],
)
def test_from_csv_rejects_bad_traces(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError):
        TraceBandwidth.from_csv(path, repeat=False)


def test_from_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TraceBandwidth.from_csv(tmp_path / "absent.csv", repeat=False)


# -- Channel -------------------------------------------------------------------------------------


def test_channel_serialises_messages() -> None:
    channel = Channel(ConstantBandwidth(8.0), overhead_s=0.01, latency_s=0.2)
    first = channel.transmit(1.0, 1_000_000)  # 1 s on the wire
    assert first.start_s == 1.0
    assert first.finish_s == pytest.approx(1.0 + 0.01 + 1.0)
    assert first.arrive_s == pytest.approx(first.finish_s + 0.2)
    second = channel.transmit(1.5, 500_000)  # queued behind the first
    assert second.start_s == pytest.approx(first.finish_s)
    assert second.finish_s == pytest.approx(first.finish_s + 0.01 + 0.5)
    assert second.arrive_s == pytest.approx(second.finish_s + 0.2)
    third = channel.transmit(10.0, 0)  # the channel is idle again
    assert third.start_s == 10.0
    assert third.finish_s == pytest.approx(10.01)
    assert channel.messages == 3
    assert channel.bytes_sent == 1_500_000
    assert channel.free_at == third.finish_s
    assert channel.min_delivery_s() == pytest.approx(0.21)


@given(
    sends=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(0, 2_000_000)), max_size=20),
    overhead=st.floats(0.0, 0.1),
    latency=st.floats(0.0, 0.5),
)
def test_channel_never_overlaps_messages(
    sends: list[tuple[float, int]], overhead: float, latency: float
) -> None:
    channel = Channel(ConstantBandwidth(10.0), overhead, latency)
    now, previous_finish = 0.0, 0.0
    for gap, n_bytes in sends:
        now += gap
        tx = channel.transmit(now, n_bytes)
        assert tx.start_s == max(now, previous_finish)
        assert tx.finish_s == pytest.approx(tx.start_s + overhead + n_bytes * 8 / 10e6)
        assert tx.arrive_s == pytest.approx(tx.finish_s + latency)
        assert tx.arrive_s - now >= channel.min_delivery_s() - 1e-12
        previous_finish = tx.finish_s
    assert channel.messages == len(sends)
    assert channel.bytes_sent == sum(n for _, n in sends)


def test_channel_over_a_trace_reads_bandwidth_as_time_passes() -> None:
    trace = TraceBandwidth([0.0, 1.0], [8.0, 16.0], False, "hold")
    channel = Channel(trace, overhead_s=0.5, latency_s=0.0)
    tx = channel.transmit(0.0, 1_000_000)
    # starts sending at 0.5 at 1 MB/s: 0.5 MB by t=1, the rest at 2 MB/s by t=1.25
    assert tx.finish_s == pytest.approx(1.25)


def test_burst_channel_lets_a_burst_through_after_idling() -> None:
    # 8 Mbit/s = 1e6 B/s; bucket 3000 B, full at t = 0
    channel = Channel(ConstantBandwidth(8.0), overhead_s=0.0, latency_s=0.01, burst_bytes=3000)
    first = channel.transmit(0.0, 1000)
    assert first.finish_s == 0.0 and first.arrive_s == pytest.approx(0.01)
    second = channel.transmit(0.0, 5000)  # 2000 B of credit left, 3000 B at the rate
    assert second.finish_s == pytest.approx(0.003)
    third = channel.transmit(0.004, 2000)  # 1 ms idle refilled 1000 B
    assert third.finish_s == pytest.approx(0.005)
    fourth = channel.transmit(1.0, 10_000)  # refilled to the cap (3000 B), not beyond
    assert fourth.finish_s == pytest.approx(1.007)


def test_burst_channel_refills_over_a_trace() -> None:
    trace = TraceBandwidth([0.0, 1.0], [8.0, 0.8], repeat=False, source="t")
    channel = Channel(trace, overhead_s=0.0, latency_s=0.0, burst_bytes=200_000)
    assert channel.transmit(1.0, 200_000).finish_s == 1.0
    # from t = 1 s the link carries 1e5 B/s: 0.5 s refills 50 kB, the rest at the rate
    assert channel.transmit(1.5, 60_000).finish_s == pytest.approx(1.6)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50_000), min_size=1, max_size=20),
    gaps=st.lists(st.floats(0.0, 0.05), min_size=20, max_size=20),
    burst=st.floats(0.0, 20_000),
)
def test_burst_never_beats_the_bucket(sizes: list[int], gaps: list[float], burst: float) -> None:
    """Token-bucket conservation: by any finish time, bytes sent <= burst + rate x time."""
    rate = 1e6
    channel = Channel(ConstantBandwidth(8.0), 0.0, 0.0, burst_bytes=burst)
    plain = Channel(ConstantBandwidth(8.0), 0.0, 0.0)
    t, sent = 0.0, 0
    for size, gap in zip(sizes, gaps, strict=False):
        t += gap
        done = channel.transmit(t, size)
        reference = plain.transmit(t, size)
        sent += size
        assert done.finish_s <= reference.finish_s + 1e-9
        assert sent <= burst + rate * done.finish_s + 1e-6


def test_deferred_bytes_occupy_the_channel_from_their_time_only() -> None:
    """ACK-like bytes: no overhead, nobody waits for them, later messages queue behind them."""
    channel = Channel(ConstantBandwidth(8.0), overhead_s=0.01, latency_s=0.2)  # 1 MB/s
    channel.defer(1.0, 10_000)  # 10 ms of the link from t = 1
    early = channel.transmit(0.5, 1000)  # before they are due: not delayed
    assert early.start_s == 0.5 and early.finish_s == pytest.approx(0.5 + 0.01 + 0.001)
    late = channel.transmit(1.0, 1000)  # queues behind them, then pays its own overhead
    assert late.start_s == pytest.approx(1.01)
    assert late.finish_s == pytest.approx(1.01 + 0.01 + 0.001)
    assert channel.bytes_sent == 12_000 and channel.messages == 2
    channel.defer(5.0, 0)  # nothing to send: nothing queued
    assert channel.deferred == []


def test_deferred_bytes_use_the_token_bucket() -> None:
    channel = Channel(ConstantBandwidth(8.0), overhead_s=0.0, latency_s=0.0, burst_bytes=3000)
    channel.defer(0.0, 2000)  # from the full bucket: out at once
    first = channel.transmit(0.0, 1000)  # the bucket's last 1000 bytes
    assert first.finish_s == pytest.approx(0.0)
    second = channel.transmit(0.0, 1000)  # empty bucket: at the rate
    assert second.finish_s == pytest.approx(0.001)
