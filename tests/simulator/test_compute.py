"""Compute traces and thermal throttling (simulator/compute.py) in the engine: a constant trace
is the plain compute factor (identical records), a step slows exactly the work started after
it, throttling is monotone, and a bad trace is one line and exit 2."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import POLICY_CONFIGS, check_invariants  # its invariant checks

from pipesd.cli import main
from simulator.compute import ComputeTrace, SpeedCursor, Thermal
from simulator.engine import SimResult, simulate
from simulator.errors import ConfigError
from simulator.profile import ThermalProfile
from simulator.scenario import expand_sweep

POLICIES = [
    {"name": "vanilla", "draft_len": 4},
    {"name": "pipesd", "autotune": False},
    {"name": "oracle"},  # its true costs read the trace at the round's time
]
PROMPTS = {"count": 3, "prompt_len": 32, "max_new_tokens": 48}


def run(path: Path, overrides: list[str] | None = None, label: str = "vanilla") -> SimResult:
    scenario = expand_sweep(path, overrides or [])[0].scenario
    entry = next(p for p in scenario.policies if p.label == label)
    return simulate(scenario, entry, 3, record_timeline=True)


def trace_file(tmp_path: Path, name: str, rows: list[tuple[float, float]]) -> str:
    text = "t_s,factor\n" + "".join(f"{t},{f}\n" for t, f in rows)
    (tmp_path / name).write_text(text)
    return name


@pytest.mark.parametrize("label", ["vanilla", "pipesd", "oracle"])
@pytest.mark.parametrize(
    ("rows", "factor"),
    [
        ([(0, 0.7), (2, 0.7), (5, 0.7)], 0.7),  # constant: folded into the compute factor
        ([(0, 0.5), (1e6, 0.25)], 0.5),  # the trace path (a power of two scales exactly)
        ([(0, 1.0), (1e6, 3.0)], 1.0),  # the trace path at factor 1 (the cursor only)
    ],
)
@pytest.mark.parametrize("side", ["edge", "cloud"])
def test_a_trace_that_never_changes_in_the_run_is_the_compute_factor(
    write_scenario, tmp_path: Path, side: str, rows, factor: float, label: str
) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    name = trace_file(tmp_path, "speed.csv", rows)
    traced = run(path, [f'{side}.compute_trace="{name}"'], label)
    plain = run(path, [f"{side}.compute_factor={factor}"], label)
    assert traced.records == plain.records
    assert traced.timeline == plain.timeline
    assert traced.policy_state == plain.policy_state


@pytest.mark.parametrize("label", ["vanilla", "pipesd"])
def test_a_step_slows_exactly_the_draft_steps_started_after_it(
    write_scenario, tmp_path: Path, label: str
) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    base = run(path, [], label)
    change_s = base.end_s / 2
    name = trace_file(tmp_path, "edge.csv", [(0, 1.0), (change_s, 0.5)])
    traced = run(path, [f'edge.compute_trace="{name}"', "edge.compute_trace_repeat=false"], label)
    scenario = expand_sweep(path)[0].scenario
    draft = scenario.profile.profile.draft_latency
    spans = [s for s in traced.timeline or [] if s.lane == "draft"]
    before = [s for s in spans if s.start_s < change_s]
    after = [s for s in spans if s.start_s >= change_s]
    assert before and after
    for span in spans:
        step_s = draft.decode_s(PROMPTS["prompt_len"] + span.first)
        expected = step_s if span.start_s < change_s else step_s / 0.5
        assert span.end_s - span.start_s == pytest.approx(expected, rel=1e-12)
    base_spans = [s for s in base.timeline or [] if s.lane == "draft" and s.start_s < change_s]
    assert before == base_spans  # nothing before the change moved
    assert traced.end_s > base.end_s


def test_a_cloud_step_slows_the_verifications_started_after_it(
    write_scenario, tmp_path: Path
) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    base = run(path)
    change_s = base.end_s / 2
    name = trace_file(tmp_path, "cloud.csv", [(0, 1.0), (change_s, 0.25)])
    traced = run(path, [f'cloud.compute_trace="{name}"', "cloud.compute_trace_repeat=false"])

    target = expand_sweep(path)[0].scenario.profile.profile.target_latency
    navs = [s for s in traced.timeline or [] if s.lane == "cloud" and s.label == "NAV"]
    assert any(s.start_s >= change_s for s in navs) and any(s.start_s < change_s for s in navs)
    for span in navs:
        alone_s = target.forward_s(span.last - span.first + 1, PROMPTS["prompt_len"] + span.first)
        expected = alone_s if span.start_s < change_s else alone_s / 0.25
        assert span.end_s - span.start_s == pytest.approx(expected, rel=1e-9)
    assert traced.cloud_busy_s > base.cloud_busy_s


def test_an_edge_group_takes_its_own_trace(write_scenario, tmp_path: Path) -> None:
    name = trace_file(tmp_path, "slow.csv", [(0, 0.5), (1e6, 0.25)])
    groups = [{"label": "plain", "count": 1}, {"label": "slow", "count": 1, "compute_trace": name}]
    path = write_scenario(policies=POLICIES, prompts=PROMPTS, edge_groups=groups)
    result = run(path)
    per_token = {0: 0.0, 1: 0.0}
    for record in result.records:
        per_token[record.edge] += record.edge_busy_s / record.drafted
    assert per_token[1] == pytest.approx(2 * per_token[0], rel=0.02)


@pytest.mark.parametrize("label", ["vanilla", "pipesd", "oracle"])
def test_a_prefill_trace_equal_to_the_compute_trace_changes_nothing(
    write_scenario, tmp_path: Path, label: str
) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    name = trace_file(tmp_path, "edge.csv", [(0, 0.6), (0.05, 1.4), (0.2, 0.9)])
    plain = run(path, [f'edge.compute_trace="{name}"'], label)
    both = run(
        path, [f'edge.compute_trace="{name}"', f'edge.prefill_compute_trace="{name}"'], label
    )
    assert both.records == plain.records
    assert both.timeline == plain.timeline


@pytest.mark.parametrize("label", ["vanilla", "pipesd"])
def test_a_prefill_trace_slows_the_prefill_alone(
    write_scenario, tmp_path: Path, label: str
) -> None:
    """The draft's prefill at its own factor (0.5: twice its time), its steps at the compute
    trace's (2: half theirs); the edge's busy time per request is exactly the sum."""
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    base = run(path, [], label)
    steps = trace_file(tmp_path, "steps.csv", [(0, 2.0), (1e6, 1.0)])
    prefill = trace_file(tmp_path, "prefill.csv", [(0, 0.5), (1e6, 1.0)])
    traced = run(
        path, [f'edge.compute_trace="{steps}"', f'edge.prefill_compute_trace="{prefill}"'], label
    )
    draft = expand_sweep(path)[0].scenario.profile.profile.draft_latency
    for span in (s for s in traced.timeline or [] if s.lane == "draft" and s.label != "tuner"):
        step_s = draft.decode_s(PROMPTS["prompt_len"] + span.first)
        assert span.end_s - span.start_s == pytest.approx(step_s / 2.0, rel=1e-12)
    prefill_s = draft.prefill_s(PROMPTS["prompt_len"])
    for record in traced.records:
        spans = [
            s for s in traced.timeline or [] if s.lane == "draft" and s.request == record.request
        ]
        busy_s = prefill_s / 0.5 + sum(s.end_s - s.start_s for s in spans)
        assert record.edge_busy_s == pytest.approx(busy_s, rel=1e-9)
    assert len(traced.records) == len(base.records)


def test_a_prefill_trace_alone_leaves_the_draft_steps_at_the_profile(
    write_scenario, tmp_path: Path
) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS)
    base = run(path)
    prefill = trace_file(tmp_path, "prefill.csv", [(0, 0.25), (1e6, 1.0)])
    traced = run(path, [f'edge.prefill_compute_trace="{prefill}"'])
    draft = expand_sweep(path)[0].scenario.profile.profile.draft_latency
    extra_s = draft.prefill_s(PROMPTS["prompt_len"]) * (1 / 0.25 - 1)
    for plain, slowed in zip(base.records, traced.records, strict=True):
        assert slowed.edge_busy_s == pytest.approx(plain.edge_busy_s + extra_s, rel=1e-9)
        assert slowed.drafted == plain.drafted
    assert traced.end_s > base.end_s


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=5),
    factors=st.lists(st.floats(0.1, 5.0), min_size=6, max_size=6),
    reads=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40),
    repeat=st.booleans(),
)
def test_the_cursor_reads_what_the_trace_says(steps, factors, reads, repeat) -> None:
    times = [0.0]
    for step in steps:
        times.append(times[-1] + step)
    trace = ComputeTrace(times, factors[: len(times)], repeat, "test")
    cursor = SpeedCursor(trace)
    for t in sorted(reads) + reads:  # along a clock, then in any order
        assert cursor.at(t) == trace.at(t)


def test_a_trace_loops_or_holds_its_last_value() -> None:
    looped = ComputeTrace([0.0, 10.0], [1.0, 0.5], True, "t")  # period 20 s
    held = ComputeTrace([0.0, 10.0], [1.0, 0.5], False, "t")
    assert [looped.at(t) for t in (5, 15, 25, 35)] == [1.0, 0.5, 1.0, 0.5]
    assert [held.at(t) for t in (5, 15, 25, 35)] == [1.0, 0.5, 0.5, 0.5]


def test_thermal_throttling_falls_under_load_and_recovers_idle() -> None:
    thermal = Thermal(ThermalProfile(depth=0.4, heat_tau_s=10.0, cool_tau_s=5.0))
    factors, t = [], 0.0
    for _ in range(200):  # 20 s of back-to-back 0.1 s steps
        factor = thermal.factor(t)
        factors.append(factor)
        thermal.busy(t, 0.1 / factor)
        t += 0.1 / factor
    assert all(b <= a for a, b in itertools.pairwise(factors))
    assert factors[0] == 1.0 and factors[-1] < 0.7
    later = [thermal.factor(t + idle) for idle in (1.0, 5.0, 30.0)]
    assert factors[-1] < later[0] < later[1] < later[2] <= 1.0
    assert later[2] == pytest.approx(1.0, abs=0.01)


def test_deeper_throttling_is_never_faster(write_scenario) -> None:
    def tpt(depth: float) -> float:
        thermal = {"depth": depth, "heat_tau_s": 0.5, "cool_tau_s": 2.0}
        path = write_scenario(
            policies=POLICIES, prompts=PROMPTS, profile_changes={"edge_thermal": thermal}
        )
        result = run(path)
        return sum(r.end_s - r.start_s for r in result.records)

    times = [tpt(d) for d in (0.0, 0.2, 0.5, 0.8)]
    assert all(b > a for a, b in itertools.pairwise(times))
    plain = run(write_scenario(policies=POLICIES, prompts=PROMPTS))
    assert times[0] == pytest.approx(sum(r.end_s - r.start_s for r in plain.records), rel=1e-12)


BAD_TRACES = {
    "nan": ("t_s,factor\n0,1\n1,nan\n", "line 3: factor must be in"),
    "inf-time": ("t_s,factor\n0,1\ninf,1\n", "line 3: t_s must be finite"),
    "zero": ("t_s,factor\n0,0\n", "line 2: factor must be in"),
    "negative": ("t_s,factor\n0,1\n2,-0.5\n", "line 3: factor must be in"),
    "unsorted": ("t_s,factor\n0,1\n5,1\n3,1\n", "line 4: t_s must increase strictly"),
    "empty": ("t_s,factor\n", "compute trace holds no rows"),
    "no-header": ("0,1\n1,2\n", "header: compute trace needs columns t_s, factor"),
    "late-start": ("t_s,factor\n1,1\n", "the first t_s must be 0"),
    "text": ("t_s,factor\n0,fast\n", "t_s and factor must be numbers"),
}


@pytest.mark.parametrize("name", list(BAD_TRACES))
@pytest.mark.parametrize("where", ["edge", "edge.prefill", "cloud", "edge_groups"])
def test_a_bad_trace_is_one_line_and_exit_2(
    write_scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, where: str
) -> None:
    text, expect = BAD_TRACES[name]
    (tmp_path / "bad.csv").write_text(text)
    sections: dict[str, Any] = {"edge_groups": [{"count": 1, "compute_trace": "bad.csv"}]}
    if where == "edge.prefill":
        sections = {"edge": {"prefill_compute_trace": "bad.csv"}}
    elif where != "edge_groups":
        sections = {where: {"compute_trace": "bad.csv"}}
    path = write_scenario(policies=POLICIES, prompts=PROMPTS, **sections)
    with pytest.raises(ConfigError) as error:
        expand_sweep(path)
    assert "bad.csv" in str(error.value)
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and expect in lines[0] and "bad.csv" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_missing_trace_names_the_field(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(policies=POLICIES, prompts=PROMPTS, cloud={"compute_trace": "no.csv"})
    with pytest.raises(ConfigError, match=r"cloud\.compute_trace: trace file 'no.csv' not found"):
        expand_sweep(path)
    path = write_scenario(policies=POLICIES, prompts=PROMPTS, edge={"prefill_compute_trace": "p"})
    with pytest.raises(ConfigError, match=r"edge\.prefill_compute_trace: trace file 'p' not found"):
        expand_sweep(path)


FAST_POLICIES = [
    {"name": "vanilla", "draft_len": 3},
    {"name": "pipesd", "autotune": False},
    {"name": "picospec"},
]
"""(Not cloud_ar: its one-edge fast path serves a generation as one job, at the factor when it
starts; the queueing cloud serves it step by step, each step at its own factor.)"""


@pytest.mark.parametrize("policy", FAST_POLICIES, ids=lambda c: c["name"])
def test_traces_keep_the_queueing_cloud_equal_to_the_fast_path(
    write_scenario, tmp_path: Path, policy
) -> None:
    """A cloud trace that speeds the target up (factor 3) must not break the edge's look-ahead
    (it bounds an answer's arrival by the fastest factor): the general queueing cloud, which
    relies on it, gives the records of the one-edge fast path, which knows every answer's
    time at once."""
    rows = [(0, 3.0), (0.2, 0.5), (0.5, 1.7), (0.9, 0.8)]
    trace_file(tmp_path, "cloud.csv", rows)
    trace_file(tmp_path, "edge.csv", [(0, 0.6), (0.3, 1.4), (0.7, 1.0)])
    path = write_scenario(
        policies=[policy],
        link={"uplink_mbps": 8.0},
        prompts={"count": 3, "prompt_len": 16, "max_new_tokens": 48},
        cloud={"compute_trace": "cloud.csv"},
        edge={"compute_trace": "edge.csv"},
    )
    scenario = expand_sweep(path)[0].scenario
    fast = simulate(scenario, scenario.policies[0], 7, exclusive_cloud=True)
    queued = simulate(scenario, scenario.policies[0], 7, exclusive_cloud=False)
    assert fast.records == queued.records
    plain = write_scenario(
        policies=[policy],
        name="plain.toml",
        link={"uplink_mbps": 8.0},
        prompts={"count": 3, "prompt_len": 16, "max_new_tokens": 48},
    )
    untraced = expand_sweep(plain)[0].scenario
    assert simulate(untraced, untraced.policies[0], 7).records != fast.records


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    policy=st.sampled_from(POLICY_CONFIGS),
    edges=st.integers(1, 4),
    max_batch=st.sampled_from([1, 4]),
    cloud_factors=st.lists(st.floats(0.2, 5.0), min_size=1, max_size=4),
    edge_factors=st.lists(st.floats(0.2, 5.0), min_size=1, max_size=4),
    step_s=st.floats(0.01, 0.5),
    thermal=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_invariants_hold_under_traces_and_throttling(
    write_scenario, tmp_path: Path, policy, edges, max_batch, cloud_factors, edge_factors,
    step_s, thermal, seed,
) -> None:  # fmt: skip
    """Causality, conservation and determinism (tests/simulator/test_engine.py's checks) with
    the edges and the cloud on random step traces, batched or not, throttled or not."""
    trace_file(tmp_path, "c.csv", [(i * step_s, f) for i, f in enumerate(cloud_factors)])
    trace_file(tmp_path, "e.csv", [(i * step_s, f) for i, f in enumerate(edge_factors)])
    changes = (
        {"edge_thermal": {"depth": 0.5, "heat_tau_s": 0.2, "cool_tau_s": 0.3}} if thermal else {}
    )
    path = write_scenario(
        policies=[policy],
        profile_changes=changes,
        payload={"kind": "token_prob"},
        cloud={"max_batch": max_batch, "compute_trace": "c.csv"},
        edge_groups=[{"count": edges, "compute_trace": "e.csv", "start_spread_s": 0.2}],
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 24},
    )
    scenario = expand_sweep(path)[0].scenario
    first = simulate(scenario, scenario.policies[0], seed, record_timeline=True)
    check_invariants(first, scenario.profile.profile.link.one_way_latency_s, 24)
    again = simulate(scenario, scenario.policies[0], seed, record_timeline=True)
    assert first.records == again.records
