"""The SimPy twin against closed forms and its invariants (causality, conservation, determinism)."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.engine import SimResult, simulate
from simulator.errors import ConfigError
from simulator.payload import payload_for
from simulator.records import Span
from simulator.scenario import expand_sweep

CONSTANT_COSTS = {
    "draft_latency.decode_per_context_token_s": 0.0,
    "target_latency.forward_per_token_s": 0.0,
    "target_latency.forward_per_context_token_s": 0.0,
}


def run_one(
    path: Path,
    label: str | None = None,
    seed: int = 1,
    timeline: bool = False,
    exclusive: bool = True,
) -> SimResult:
    scenario = expand_sweep(path)[0].scenario
    entry = (
        scenario.policies[0]
        if label is None
        else next(p for p in scenario.policies if p.label == label)
    )
    return simulate(scenario, entry, seed, record_timeline=timeline, exclusive_cloud=exclusive)


@pytest.mark.parametrize(
    ("rate", "draft_len", "payload"), [(0.7, 4, "full"), (0.9, 6, "token_prob"), (0.5, 2, "topk")]
)
def test_vanilla_tpt_matches_closed_form(
    write_scenario, rate: float, draft_len: int, payload: str
) -> None:
    path = write_scenario(
        policies=[{"name": "vanilla", "draft_len": draft_len}],
        profile_changes={
            **CONSTANT_COSTS,
            "acceptance": {
                "kind": "iid",
                "rate": rate,
                "confidence": {"kind": "constant", "value": 0.9},
            },
        },
        prompts={"count": 8, "prompt_len": 64, "max_new_tokens": 3000},
        payload={"kind": payload, "top_k": 8},
    )
    scenario = expand_sweep(path)[0].scenario
    profile = scenario.profile.profile
    payload_bytes = {"full": 5 + 5 + 32000 * 9, "token_prob": 5 + 9, "topk": 5 + 5 + 8 * (5 + 9)}[
        payload
    ]
    link = profile.link
    up_s = link.uplink_overhead_s + (64 + draft_len * payload_bytes) * 8 / (link.uplink_mbps * 1e6)
    down_s = link.downlink_overhead_s + (64 + 2 * 5) * 8 / (link.downlink_mbps * 1e6)
    round_s = (
        draft_len * profile.draft_latency.decode_base_s
        + up_s
        + 2 * link.one_way_latency_s
        + profile.target_latency.forward_base_s
        + down_s
    )
    tokens_per_round = (1 - rate ** (draft_len + 1)) / (1 - rate)
    expected_tpt = round_s / tokens_per_round
    result = simulate(scenario, scenario.policies[0], seed=3)
    decode = sum(r.decode_s for r in result.records)
    tokens = sum(r.new_tokens - 1 for r in result.records)
    assert decode / tokens == pytest.approx(expected_tpt, rel=0.01)


POLICY_CONFIGS = [
    {"name": "vanilla", "draft_len": 3},
    {"name": "hsl", "r2": 0.8},
    {"name": "edgellm"},
    {"name": "pmin"},
    {"name": "hf_heuristic"},
    {"name": "pipesd", "autotune": False},
    {"name": "pipesd", "autotune": False, "pipeline": False},
    {"name": "pipesd", "autotune": False, "proactive": False, "fixed_batch": 2},
    {
        "name": "pipesd",
        "autotune": True,
        "tune_calls": 6,
        "tune_initial_points": 3,
        "tune_window_tokens": 10,
    },
    {"name": "picospec"},
    {"name": "picospec", "truncate": False, "draft_len": 6},
    {"name": "oracle"},
    {"name": "cloud_ar"},
]


def check_invariants(result: SimResult, latency_s: float, max_new: int) -> None:
    """Causality and conservation, request by request."""
    eps = 1e-9
    spans = result.timeline or []
    for record in result.records:
        assert record.new_tokens == max_new
        assert record.drafted == record.verified + record.discarded + record.bonus_matches
        assert 0 <= record.accepted <= record.verified
        assert record.start_s <= record.first_token_s <= record.end_s
        mine = [s for s in spans if (s.edge, s.request) == (record.edge, record.request)]
        drafts = [s for s in mine if s.lane == "draft"]
        uploads = [s for s in mine if s.lane == "uplink"]
        navs_up = [s for s in uploads if s.label == "NAV"]
        navs_cloud = [s for s in mine if s.lane == "cloud" and s.label == "NAV"]
        results = [s for s in mine if s.lane == "result"]
        assert len(navs_up) == len(navs_cloud) == len(results) == record.navs
        for earlier, later in itertools.pairwise(drafts):
            assert later.start_s >= earlier.end_s - eps, "the drafter does one token at a time"
        for earlier, later in itertools.pairwise(uploads):
            assert later.start_s >= earlier.end_s - eps, "the uplink is serialised"
    cloud = sorted((s for s in spans if s.lane == "cloud"), key=lambda s: s.start_s)
    for earlier, later in itertools.pairwise(cloud):
        # one verifier: services never overlap (a batch shares one interval exactly)
        same_batch = (earlier.start_s, earlier.end_s) == (later.start_s, later.end_s)
        assert same_batch or later.start_s >= earlier.end_s - eps, "the cloud is one machine"
        for span in uploads:
            assert span.start_s >= span.ready_s - eps, "no message leaves before it is sent"
            for position in range(span.first, span.last):
                assert any(d.first == position and d.end_s <= span.ready_s + eps for d in drafts), (
                    "no token is sent before it is drafted"
                )
        committed = 0
        for up, cloud, answer in zip(navs_up, navs_cloud, results, strict=True):
            assert (cloud.first, cloud.last) == (committed, up.last)
            assert cloud.start_s >= up.end_s + latency_s - eps, "verified only after arrival"
            for position in range(cloud.first, cloud.last):
                assert any(
                    u.first <= position < u.last and u.end_s + latency_s <= cloud.start_s + eps
                    for u in uploads
                ), "every verified token arrived before verification"
            assert answer.start_s >= cloud.end_s + latency_s - eps, "no answer before verification"
            assert answer.end_s >= answer.start_s - eps
            accepted = int(answer.label.split("/")[0])
            assert committed < max_new, "no NAV after the request is complete"
            committed += accepted + 1
        if record.navs:
            assert committed >= max_new


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    policy=st.sampled_from(POLICY_CONFIGS),
    uplink=st.sampled_from([1.0, 5.0, 20.0, 200.0]),
    factor=st.sampled_from([0.25, 1.0, 4.0]),
    rate=st.floats(0.05, 0.95),
    payload=st.sampled_from(["token_id", "full", "topk"]),
    max_new=st.integers(2, 40),
    seed=st.integers(0, 10_000),
    calibrated=st.booleans(),
    exclusive=st.booleans(),
)
def test_causality_conservation_and_determinism(
    write_scenario, policy, uplink, factor, rate, payload, max_new, seed, calibrated, exclusive
) -> None:
    acceptance = (
        {
            "kind": "calibrated",
            "confidence": {"kind": "beta", "a": 2.0, "b": 1.0},
            "p_accept": {"kind": "power", "exponent": 1.0},
        }
        if calibrated
        else {"kind": "iid", "rate": rate, "confidence": {"kind": "beta", "a": 2.0, "b": 1.0}}
    )
    path = write_scenario(
        policies=[policy],
        profile_changes={"acceptance": acceptance},
        link={"uplink_mbps": uplink},
        edge={"compute_factor": factor},
        payload={"kind": payload},
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": max_new},
    )
    first = run_one(path, seed=seed, timeline=True, exclusive=exclusive)
    latency = expand_sweep(path)[0].scenario.profile.profile.link.one_way_latency_s
    check_invariants(first, latency, max_new)
    second = run_one(path, seed=seed, timeline=True, exclusive=exclusive)
    assert first.records == second.records
    assert first.timeline == second.timeline


def test_seeds_change_outcomes(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "vanilla"}])
    assert run_one(path, seed=1).records != run_one(path, seed=2).records


def test_oracle_bounds_every_speculative_policy(write_scenario) -> None:
    policies = [c for c in POLICY_CONFIGS if c["name"] not in ("cloud_ar",)]
    policies = [dict(c, label=f"p{i}") for i, c in enumerate(policies)]
    for uplink, payload in [(20.0, "full"), (100.0, "token_prob"), (2.0, "topk")]:
        path = write_scenario(
            policies=policies,
            link={"uplink_mbps": uplink},
            payload={"kind": payload},
            prompts={"count": 6, "prompt_len": 32, "max_new_tokens": 96},
            profile_changes=CONSTANT_COSTS,
        )
        tpt = {}
        for config in policies:
            result = run_one(path, config["label"], seed=5)
            tpt[config["name"] + config["label"]] = sum(r.decode_s for r in result.records)
        oracle = next(v for k, v in tpt.items() if k.startswith("oracle"))
        assert all(oracle <= v * 1.0001 for v in tpt.values()), (uplink, tpt)


def test_lower_bandwidth_never_helps_vanilla(write_scenario) -> None:
    times = []
    for uplink in (5.0, 10.0, 20.0, 80.0):
        path = write_scenario(link={"uplink_mbps": uplink}, name=f"s{uplink}.toml")
        times.append(sum(r.decode_s for r in run_one(path).records))
    assert times == sorted(times, reverse=True)


def test_cloud_ar_streams_one_forward_per_token(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "cloud_ar"}], profile_changes=CONSTANT_COSTS)
    result = run_one(path)
    forward = expand_sweep(path)[0].scenario.profile.profile.target_latency.forward_base_s
    for record in result.records:
        assert record.tpt_s == pytest.approx(forward, rel=1e-6)
        assert record.drafted == record.navs == 0


def test_timeline_spans_are_well_formed(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "pipesd", "autotune": False}])
    result = run_one(path, timeline=True)
    assert result.timeline
    assert {s.lane for s in result.timeline} >= {"draft", "uplink", "cloud", "downlink", "result"}
    assert all(isinstance(s, Span) and s.end_s >= s.start_s for s in result.timeline)


@pytest.mark.parametrize("policy", POLICY_CONFIGS, ids=lambda c: c["name"])
def test_exclusive_cloud_fast_path_changes_nothing(write_scenario, policy) -> None:
    path = write_scenario(
        policies=[policy],
        link={"uplink_mbps": 8.0},
        prompts={"count": 3, "prompt_len": 16, "max_new_tokens": 64},
    )
    scenario = expand_sweep(path)[0].scenario
    fast = simulate(scenario, scenario.policies[0], 7, record_timeline=True, exclusive_cloud=True)
    queued = simulate(
        scenario, scenario.policies[0], 7, record_timeline=True, exclusive_cloud=False
    )
    assert fast.records == queued.records

    def comparable(spans: list[Span] | None) -> list[Span]:
        # the queueing path serves cloud-only generation step by step (batchable), the fast
        # path as one job: same token times (the records), different cloud spans
        steps = policy["name"] == "cloud_ar"
        return sorted(s for s in spans or [] if not (steps and s.lane == "cloud"))

    assert comparable(fast.timeline) == comparable(queued.timeline)
    assert fast.policy_state == queued.policy_state


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    policy=st.sampled_from(POLICY_CONFIGS),
    edges=st.integers(2, 6),
    max_batch=st.sampled_from([1, 2, 8]),
    window=st.sampled_from([0.0, 0.01]),
    poisson=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_many_edges_keep_every_invariant(
    write_scenario, policy, edges, max_batch, window, poisson, seed
) -> None:
    group = {"count": edges, "compute_spread": 0.5, "start_spread_s": 0.5}
    if poisson:
        group.update(arrival="poisson", rate_per_s=2.0)
    path = write_scenario(
        policies=[policy],
        payload={"kind": "token_prob"},
        cloud={"max_batch": max_batch, "batch_window_s": window},
        edge_groups=[group],
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 24},
    )
    first = run_one(path, seed=seed, timeline=True)
    assert len({r.edge for r in first.records}) == edges
    latency = expand_sweep(path)[0].scenario.profile.profile.link.one_way_latency_s
    check_invariants(first, latency, 24)
    assert first.records == run_one(path, seed=seed, timeline=True).records


@pytest.mark.parametrize(
    ("policy", "fraction"),
    [({"name": "split"}, 0.25), ({"name": "split", "edge_fraction": 0.5}, 0.5)],
    ids=["profile's split", "policy's split"],
)
def test_split_inference_matches_its_closed_form(
    write_scenario, policy: dict[str, object], fraction: float
) -> None:
    split = {
        "edge_fraction": 0.25,
        "edge_forward_s": 0.2,
        "edge_prefill_per_token_s": 0.001,
        "hidden_state_bytes": 8192,
    }
    path = write_scenario(
        policies=[policy],
        profile_changes={**CONSTANT_COSTS, "split": split},
        edge={"compute_factor": 0.5},
        prompts={"count": 2, "prompt_len": 32, "max_new_tokens": 50},
    )
    scenario = expand_sweep(path)[0].scenario
    profile = scenario.profile.profile
    link = profile.link
    per_token = (
        fraction * 0.2 / 0.5
        + link.uplink_overhead_s
        + (64 + 8192) * 8 / (link.uplink_mbps * 1e6)
        + 2 * link.one_way_latency_s
        + (1 - fraction) * profile.target_latency.forward_base_s
        + link.downlink_overhead_s
        + (64 + 5) * 8 / (link.downlink_mbps * 1e6)
    )
    result = simulate(scenario, scenario.policies[0], seed=1)
    for record in result.records:
        assert record.tpt_s == pytest.approx(per_token, rel=1e-9)
        assert record.drafted == record.navs == 0
        assert record.uplink_messages == 50


def test_split_inference_needs_the_profile_section(write_scenario) -> None:
    path = write_scenario(policies=[{"name": "split"}])
    with pytest.raises(ConfigError, match="split"):
        expand_sweep(path)


def test_an_edge_group_can_bring_its_own_profile(write_scenario, tmp_path: Path) -> None:
    path = write_scenario(
        policies=[{"name": "vanilla"}],
        edge_groups=[
            {"count": 2, "label": "fast"},
            {"count": 2, "label": "slow", "profile": "slow.json"},
        ],
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 32},
    )
    profile = json.loads((tmp_path / "profile.json").read_text())
    profile["draft_latency"]["decode_base_s"] *= 4
    (tmp_path / "slow.json").write_text(json.dumps(profile))
    scenario = expand_sweep(path)[0].scenario
    result = simulate(scenario, scenario.policies[0], seed=1)
    drafting = {"fast": 0.0, "slow": 0.0}
    for record in result.records:
        group = "fast" if record.edge < 2 else "slow"
        drafting[group] += record.edge_busy_s / max(record.drafted, 1)
    assert drafting["slow"] > 2.5 * drafting["fast"]


def test_cloud_compute_factor_divides_every_target_time(write_scenario) -> None:
    """cloud.compute_factor = 2: the same NAVs, each verified in half the profile's time."""
    path = write_scenario(policies=[{"name": "vanilla", "draft_len": 4}])
    base = simulate(expand_sweep(path)[0].scenario, expand_sweep(path)[0].scenario.policies[0], 1)
    fast_point = expand_sweep(path, ["cloud.compute_factor=2.0"])[0]
    fast = simulate(fast_point.scenario, fast_point.scenario.policies[0], 1)
    assert [r.navs for r in fast.records] == [r.navs for r in base.records]
    assert fast.cloud_busy_s == pytest.approx(base.cloud_busy_s / 2, rel=1e-12)
    assert sum(r.end_s - r.start_s for r in fast.records) < sum(
        r.end_s - r.start_s for r in base.records
    )


def test_ack_bytes_follow_each_answer_and_slow_only_a_busy_link(write_scenario) -> None:
    """`payload.message_ack_bytes` is counted on every upload and NAV, and delays a later
    message only where the link is slow enough for it to matter."""
    policies = [{"name": "pipesd", "autotune": False}]
    times, totals = {}, {}
    for mbps in (0.05, 1000.0):
        for ack in (0, 2000):
            path = write_scenario(
                policies=policies,
                profile_changes={"payload.message_ack_bytes": ack},
                link={"uplink_mbps": mbps},
                payload={"kind": "token_prob"},
                name=f"a{mbps}-{ack}.toml",
            )
            records = run_one(path).records
            times[mbps, ack] = sum(r.decode_s for r in records)
            messages = sum(r.uplink_messages for r in records)
            totals[mbps, ack] = (sum(r.uplink_bytes for r in records), messages - len(records))
    for mbps in (0.05, 1000.0):
        (plain, messages), (acked, acked_messages) = totals[mbps, 0], totals[mbps, 2000]
        if mbps == 1000.0:  # same schedule: the ACKs add exactly their bytes
            assert acked_messages == messages  # uploads and NAVs (prompts carry none)
            assert acked == plain + 2000 * messages
    assert times[1000.0, 2000] == pytest.approx(times[1000.0, 0], rel=1e-3)
    assert times[0.05, 2000] > times[0.05, 0]


def test_pipesd_observes_uploads_as_the_edge_does(write_scenario, monkeypatch) -> None:
    """PipeSD's upload timings are what a real edge can measure: send to the answer's arrival
    (both latencies and overheads included, as realrun reports them), not the link's
    serialisation time alone."""
    from policies.pipesd.policy import PipeSD

    seen: list[tuple[int, float]] = []
    original = PipeSD.on_upload

    def record(self: PipeSD, n_tokens: int, duration_s: float) -> None:
        seen.append((n_tokens, duration_s))
        original(self, n_tokens, duration_s)

    monkeypatch.setattr(PipeSD, "on_upload", record)
    up_overhead, down_overhead, latency, mbps = 0.003, 0.002, 0.02, 8.0
    path = write_scenario(
        policies=[{"name": "pipesd", "autotune": False}],
        link={
            "uplink_mbps": mbps,
            "one_way_latency_s": latency,
            "uplink_overhead_s": up_overhead,
            "downlink_overhead_s": down_overhead,
        },
        payload={"kind": "token_prob"},
    )
    scenario = expand_sweep(path)[0].scenario
    payload = payload_for(scenario.profile.profile.payload, scenario.model.payload)
    run_one(path)
    probes = scenario.policies[0].params.probe_sizes  # type: ignore[attr-defined]
    assert [n for n, _ in seen[: len(probes)]] == list(probes)
    floor = up_overhead + down_overhead + 2 * latency
    for size, duration in seen[: len(probes)]:  # an idle link: exactly the round trip
        wire_s = payload.batch_bytes(size) * 8 / (mbps * 1e6)
        assert duration == pytest.approx(floor + wire_s, rel=1e-9)
    later = seen[len(probes) :]
    assert later and all(duration >= floor for _, duration in later)


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than `seconds`."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs SIGALRM for the deadline")
@pytest.mark.parametrize("rate", [1e-300, 1e-17, 1e6])
@pytest.mark.parametrize("name", ["pipesd", "picospec", "edgellm", "vanilla", "cloud_ar"])
def test_extreme_but_valid_arrival_rates_terminate(write_scenario, name: str, rate: float) -> None:
    """Arrivals at 1e300 s (where a token's time is below the clock's resolution) or all at
    once: every request completes (a proactive edge once waited forever for time to move)."""
    path = write_scenario(
        policies=[{"name": name}],
        edge_groups=[{"count": 2, "arrival": "poisson", "rate_per_s": rate}],
        prompts={"count": 2, "prompt_len": 16, "max_new_tokens": 16},
    )
    with deadline(60):
        result = run_one(path)
    assert len(result.records) == 4
    assert all(r.new_tokens == 16 and r.start_s <= r.end_s for r in result.records)
