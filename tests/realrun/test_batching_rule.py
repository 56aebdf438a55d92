"""One batching rule (policies/batching.py): the simulator's cloud and the server's Batcher
form the same batches at the same times from one scripted arrival sequence."""

from __future__ import annotations

import math
import threading
import time

import pytest
import simpy

from policies.batching import BatchRule
from realrun.cloud.batching import Batcher
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
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # group by the batch's first start (members of one batch share it exactly)
    return batches(starts)


def test_simulator_forms_the_worked_batches():
    assert simulated() == EXPECTED


def test_server_forms_the_simulators_batches_at_its_times():
    got = served()
    assert [members for members, _ in got] == [members for members, _ in EXPECTED]
    for (_, start), (_, expected) in zip(got, EXPECTED, strict=True):
        assert start == pytest.approx(expected, abs=0.3)  # 60 ms: thread wake-ups


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
