"""The uplink's delay spread (simulator/link_jitter.py): a jittered channel keeps the channel's
occupancy, moves each arrival by a drawn sample within its bounds and in send order, is
reproducible under its seed, and a simulation with it keeps every invariant."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import check_invariants, run_one

from simulator.link import Channel, ConstantBandwidth
from simulator.link_jitter import JitteredChannel, UplinkJitter
from simulator.scenario import expand_sweep

OVERHEAD_S, LATENCY_S = 0.004, 0.01


def channels(samples: list[float], seed: int = 7, burst: float = 0.0):
    args = (ConstantBandwidth(0.05), OVERHEAD_S, LATENCY_S, burst)
    return Channel(*args), JitteredChannel(*args, UplinkJitter(samples), seed)


messages = st.lists(
    st.tuples(st.floats(0.0, 0.5), st.integers(0, 3000)), min_size=1, max_size=40
).map(lambda gaps: [(sum(g for g, _ in gaps[: i + 1]), n) for i, (_, n) in enumerate(gaps)])


@settings(max_examples=80, deadline=None)
@given(
    sent=messages,
    samples=st.lists(st.floats(-0.02, 0.05), min_size=1, max_size=20),
    burst=st.sampled_from([0.0, 2896.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrivals_move_within_bounds_and_keep_their_order(sent, samples, burst, seed):
    plain, jittered = channels(samples, seed, burst)
    floor = jittered.min_delivery_s()
    arrivals = []
    for send_s, n_bytes in sent:
        base, moved = plain.transmit(send_s, n_bytes), jittered.transmit(send_s, n_bytes)
        assert (moved.start_s, moved.finish_s) == (base.start_s, base.finish_s)  # occupancy
        assert moved.arrive_s >= base.arrive_s - OVERHEAD_S - 1e-12  # at most the overhead early
        assert moved.arrive_s >= send_s + floor - 1e-12
        latest = max(base.arrive_s + max(samples), base.arrive_s - OVERHEAD_S, *arrivals)
        assert moved.arrive_s <= latest + 1e-12
        arrivals.append(moved.arrive_s)
    assert all(a <= b for a, b in pairwise(arrivals)), "messages arrive in send order"


def test_zero_samples_change_nothing_and_a_seed_replays_its_draws():
    plain, zero = channels([0.0, 0.0])
    sent = [(0.01 * i, 100 * i) for i in range(30)]
    assert [plain.transmit(t, n) for t, n in sent] == [zero.transmit(t, n) for t, n in sent]
    samples = [-0.003, 0.0, 0.002, 0.02]
    first, again, other = (channels(samples, seed)[1] for seed in (1, 1, 2))
    draws = [[c.transmit(t, n).arrive_s for t, n in sent] for c in (first, again, other)]
    assert draws[0] == draws[1] and draws[0] != draws[2]


def jitter_scenario(write_scenario, samples, policy=None, max_new=24, uplink_mbps=0.5):
    """A small scenario whose uplink draws from `samples` (jitter.csv beside it)."""
    path = write_scenario(
        policies=[policy or {"name": "pipesd", "autotune": False}],
        link={"uplink_mbps": uplink_mbps, "uplink_jitter": "jitter.csv"},
        prompts={"count": 3, "prompt_len": 16, "max_new_tokens": max_new},
    )
    rows = "".join(f"{sample!r}\n" for sample in samples)
    (path.parent / "jitter.csv").write_text("jitter_s\n" + rows)
    return path


@pytest.mark.parametrize("policy", [{"name": "vanilla"}, {"name": "pipesd", "autotune": False}])
def test_a_jitter_of_zeros_gives_the_records_without_one(write_scenario, tmp_path, policy):
    with_zeros = jitter_scenario(write_scenario, [0.0], policy)
    text = with_zeros.read_text().replace('uplink_jitter = "jitter.csv"\n', "")
    without = tmp_path / "without.toml"
    without.write_text(text)
    assert run_one(with_zeros).records == run_one(without).records


def test_jitter_moves_pipesd_and_is_reproducible(write_scenario, tmp_path):
    path = jitter_scenario(write_scenario, [-0.003, 0.0, 0.001, 0.004, 0.03])
    first, second = run_one(path, seed=3), run_one(path, seed=3)
    assert first.records == second.records
    assert first.records != run_one(path, seed=4).records
    plain = tmp_path / "plain.toml"
    plain.write_text(path.read_text().replace('uplink_jitter = "jitter.csv"\n', ""))
    assert [r.end_s for r in first.records] != [r.end_s for r in run_one(plain, seed=3).records]


POLICIES = [
    {"name": "vanilla", "draft_len": 3},
    {"name": "edgellm"},
    {"name": "pipesd", "autotune": False},
    {"name": "pipesd"},
]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    policy=st.sampled_from(POLICIES),
    uplink=st.sampled_from([0.05, 1.0, 20.0]),
    samples=st.lists(st.floats(-0.01, 0.05), min_size=1, max_size=8),
    max_new=st.integers(2, 30),
    seed=st.integers(0, 10_000),
    exclusive=st.booleans(),
)
def test_a_jittered_uplink_keeps_causality_conservation_and_determinism(
    write_scenario, policy, uplink, samples, max_new, seed, exclusive
):
    path = jitter_scenario(write_scenario, samples, policy, max_new, uplink)
    first = run_one(path, seed=seed, timeline=True, exclusive=exclusive)
    link = expand_sweep(path)[0].scenario.profile.profile.link
    # a message may arrive up to the uplink's overhead before the channel's finish + latency
    check_invariants(first, link.one_way_latency_s - link.uplink_overhead_s, max_new)
    assert first.records == run_one(path, seed=seed, timeline=True, exclusive=exclusive).records
