"""One batching rule (policies/batching.py), and one rule for a DiP-SD plan's turns
(policies/dipsd/turns.py): the simulator's cloud and the server's Batcher form the same batches
at the same times from one scripted arrival sequence."""

from __future__ import annotations

import math
import threading
import time

import pytest
import simpy

from policies.batching import BatchRule
from policies.dipsd.turns import PlanTurns
from realrun.cloud.batching import Batcher, PlanBatching, PlanSeat
from simulator.cloud import Cloud, Job

UNIT_S = 0.2
"""Seconds per time unit of the script: wide enough for thread wake-ups on a busy machine."""
SERVICE = 2.0
"""Units one batch takes, whatever its size."""
WINDOW = 1.5
MAX_BATCH = 3
ARRIVALS = (0.0, 0.5, 2.5, 2.8, 3.1, 3.8, 9.0)
"""A, B wait out the window; C, D, E fill a batch while A+B run; F's window has passed when
the cloud frees; G alone waits out its window."""
EXPECTED = [((0, 1), 1.5), ((2, 3, 4), 3.5), ((5,), 5.5), ((6,), 10.5)]
"""(members, start in units): worked out by hand from the rule."""


class Nav(Job):
    """A NAV of one position over one token of context."""

    __slots__ = ("index", "starts")
    batchable = True
    nav = True
    span_label = None
    positions = 1
    context = 1

    def __init__(self, index: int, starts: list[tuple[int, float]], record=None) -> None:
        super().__init__(SERVICE, record)
        self.index, self.starts = index, starts

    def begin(self, now_s: float, done_s: float) -> None:
        self.starts.append((self.index, now_s))


class FlatTarget:
    """A target whose batch costs SERVICE whatever its size."""

    def forward_s(self, *_args: float) -> float:
        return SERVICE


class Record:
    cloud_busy_s = 0.0


def batches(starts: list[tuple[int, float]]) -> list[tuple[tuple[int, ...], float]]:
    """Group (job, start) into (members, start) in order of start."""
    grouped: dict[float, list[int]] = {}
    for index, start in starts:
        grouped.setdefault(round(start, 9), []).append(index)
    return [(tuple(sorted(members)), start) for start, members in sorted(grouped.items())]


def run_all(threads: list[threading.Thread]) -> None:
    """Start every client (and retirement) thread, then wait for all of them."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def assert_same_batches(
    got: list[tuple[tuple[int, ...], float]], expected: list[tuple[tuple[int, ...], float]]
) -> None:
    """The same members batch by batch, each batch starting at the expected time."""
    assert [members for members, _ in got] == [members for members, _ in expected]
    for (_, start), (_, at) in zip(got, expected, strict=True):
        assert start == pytest.approx(at, abs=0.3)  # 60 ms: thread wake-ups


def simulated() -> list[tuple[tuple[int, ...], float]]:
    env = simpy.Environment()
    cloud = Cloud(env, None, FlatTarget(), max_batch=MAX_BATCH, batch_window_s=WINDOW)  # type: ignore[arg-type]
    starts: list[tuple[int, float]] = []
    for index, at in enumerate(ARRIVALS):
        cloud.arrive(Nav(index, starts, Record()), at)  # type: ignore[arg-type]
    env.run(until=20)
    return batches(starts)


def served() -> list[tuple[tuple[int, ...], float]]:
    origin = time.monotonic()
    starts: list[tuple[int, float]] = []

    def process(items: list[int]) -> list[int]:
        now = (time.monotonic() - origin) / UNIT_S
        starts.extend((i, now) for i in items)
        time.sleep(SERVICE * UNIT_S)
        return items

    batcher: Batcher[int, int] = Batcher(process, BatchRule(MAX_BATCH, WINDOW * UNIT_S))

    def client(index: int, at: float) -> None:
        time.sleep(max(0.0, origin + at * UNIT_S - time.monotonic()))
        assert batcher.submit(index, index) == index

    threads = [threading.Thread(target=client, args=(i, at)) for i, at in enumerate(ARRIVALS)]
    run_all(threads)
    # group by the batch's first start (members of one batch share it exactly)
    return batches(starts)


def test_simulator_forms_the_worked_batches():
    assert simulated() == EXPECTED


def test_server_forms_the_simulators_batches_at_its_times():
    assert_same_batches(served(), EXPECTED)


def test_a_sessions_second_item_waits_for_a_later_batch():
    rule = BatchRule(4, 0.0)

    class Item:
        batchable = True

        def __init__(self, arrived_s: float, key: str) -> None:
            self.arrived_s, self.key = arrived_s, key

    queue = [Item(0.0, "a"), Item(0.1, "a"), Item(0.2, "b")]
    assert rule.take(queue, 1.0, key=lambda item: item.key) == [0, 2]
    assert rule.take(queue, 1.0) == [0, 1, 2]


def test_window_unbatchable_head_and_empty_queue():
    class Item:
        def __init__(self, arrived_s: float, batchable: bool = True) -> None:
            self.arrived_s, self.batchable = arrived_s, batchable

    rule = BatchRule(3, 0.5)
    assert rule.take([], 0.0) == math.inf
    assert rule.take([Item(1.0)], 1.2) == pytest.approx(1.5)  # window open: ask again then
    assert rule.take([Item(1.0)], 1.5) == [0]
    assert rule.take([Item(1.0, False), Item(1.1)], 1.1) == [0]  # a prefill goes alone
    assert rule.take([Item(1.0), Item(1.1, False)], 1.1) == [0]  # none waits behind a prefill
    assert rule.take([Item(1.0), Item(1.1), Item(1.2), Item(1.3)], 1.3) == [0, 1, 2]  # full
    assert BatchRule(1, 9.0).take([Item(1.0), Item(1.1)], 1.1) == [0]  # FCFS, no window


@pytest.mark.parametrize("max_batch, window_s", [(0, 0.0), (2, -1.0), (2, math.inf)])
def test_bad_rule(max_batch, window_s):
    with pytest.raises(ValueError):
        BatchRule(max_batch, window_s)


# ------------------------------------------------------------------------------ DiP-SD plans

PLAN = ((0, 2), (1, 3))
"""A plan of two batches of two edges, verified in turn."""
PLAN_ARRIVALS = ((1, 0.0), (0, 0.5), (3, 1.0), (2, 2.0), (0, 4.5), (2, 5.0), (1, 7.0), (2, 10.0))
"""(edge, arrival in units) of each NAV, in order of arrival."""
RETIREMENTS = ((3, 8.5), (0, 11.0))
"""(edge, time in units) at which an edge finishes its last request."""
PLAN_EXPECTED = [((1, 3), 2.0), ((0, 2), 4.0), ((4, 5), 6.0), ((6,), 8.5), ((7,), 11.0)]
"""(NAVs, start in units), worked out by hand: batch (0, 2) goes first though (1, 3) was complete
earlier; a batch waits for its active edges only (edge 3's retirement starts NAV 6 alone, edge
0's NAV 7)."""


class Edge:
    """The record of a NAV: its edge."""

    cloud_busy_s = 0.0

    def __init__(self, edge: int) -> None:
        self.edge = edge


def plan_simulated() -> list[tuple[tuple[int, ...], float]]:
    env = simpy.Environment()
    cloud = Cloud(env, None, FlatTarget(), plan=PLAN)  # type: ignore[arg-type]
    starts: list[tuple[int, float]] = []
    for index, (edge, at) in enumerate(PLAN_ARRIVALS):
        cloud.arrive(Nav(index, starts, Edge(edge)), at)  # type: ignore[arg-type]

    def retire(edge: int, at: float):
        yield env.timeout(at)
        cloud.retire(edge)

    for edge, at in RETIREMENTS:
        env.process(retire(edge, at))
    env.run(until=20)
    return batches(starts)


def plan_served() -> list[tuple[tuple[int, ...], float]]:
    origin = time.monotonic()
    starts: list[tuple[int, float]] = []

    def process(items: list[int]) -> list[int]:
        now = (time.monotonic() - origin) / UNIT_S
        starts.extend((i, now) for i in items)
        time.sleep(SERVICE * UNIT_S)
        return items

    plans: PlanBatching[int, int] = PlanBatching(process, threading.Lock())
    for edge, _ in RETIREMENTS:  # the session whose close retires its edge
        plans.join(f"last{edge}", PlanSeat(PLAN, edge, last=True))

    def client(index: int, edge: int, at: float) -> None:
        plans.join(f"s{index}", PlanSeat(PLAN, edge, last=False))
        time.sleep(max(0.0, origin + at * UNIT_S - time.monotonic()))
        assert plans.submit(f"s{index}", index) == index
        plans.leave(f"s{index}")

    def retire(edge: int, at: float) -> None:
        time.sleep(max(0.0, origin + at * UNIT_S - time.monotonic()))
        plans.leave(f"last{edge}")

    threads = [
        threading.Thread(target=client, args=(i, edge, at))
        for i, (edge, at) in enumerate(PLAN_ARRIVALS)
    ] + [threading.Thread(target=retire, args=retirement) for retirement in RETIREMENTS]
    run_all(threads)
    assert plans.batcher is not None  # edges 1 and 2 never retired: the plan is still on
    return batches(starts)


def test_simulator_verifies_the_plans_worked_turns():
    assert plan_simulated() == PLAN_EXPECTED


def test_server_verifies_the_simulators_plan_turns_at_its_times():
    assert_same_batches(plan_served(), PLAN_EXPECTED)


def test_plan_turns_serve_a_job_outside_the_plan_first_and_only_look():
    turns = PlanTurns(PLAN)

    class Job:
        def __init__(self, edge: int | None) -> None:
            self.edge = edge

    queue = [Job(0), Job(2), Job(None)]
    assert turns.take(queue) == [2]  # a prefill alone, first
    turns.started([queue[2]])
    assert turns.turn == 0  # no turn moved
    assert turns.take(queue[:2]) == [0, 1] and turns.take(queue[:2]) == [0, 1]  # take only looks
    turns.started(queue[:2])
    assert turns.take([Job(1)]) == math.inf  # edge 3's NAV is missing
    turns.retire(3)
    assert turns.take([Job(1)]) == [0]
    for edge in (0, 1, 2):
        turns.retire(edge)
    assert turns.take([Job(1)]) == math.inf  # everyone retired


@pytest.mark.parametrize("batches", [(), ((0,), ()), ((0, 1), (1,))])
def test_bad_plan(batches):
    with pytest.raises(ValueError):
        PlanTurns(batches)


def test_a_second_plan_and_a_retired_edge_are_refused():
    plans: PlanBatching[int, int] = PlanBatching(lambda items: items, threading.Lock())
    plans.join("a", PlanSeat(PLAN, 0, last=True))
    with pytest.raises(ValueError, match="another DiP-SD plan"):
        plans.join("b", PlanSeat(((0, 1),), 0, last=False))
    plans.leave("a")
    with pytest.raises(ValueError, match="retired"):
        plans.join("c", PlanSeat(PLAN, 0, last=False))
    for edge in (1, 2, 3):
        plans.join(f"l{edge}", PlanSeat(PLAN, edge, last=True))
        plans.leave(f"l{edge}")
    assert plans.batcher is None  # the plan is over: a new one may start
    plans.join("d", PlanSeat(((0, 1),), 1, last=False))
    assert plans.submit("nobody", 5) is None  # a session outside the plan
