"""The cloud verifier of the SimPy twin: jobs, and one machine serving them alone or batched.

A job (`Job`) is work whose service time is known when it arrives; its whole effect (an
answer's arrival at the edge, a streamed token) is computed when its service starts, so the
cloud costs one SimPy event per job, or none with a single edge. Edges (simulator/edge.py) send
NAVs; cloud-only generation and split inference (simulator/ar_stream.py) send their steps.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections import deque
from collections.abc import Generator
from typing import Any, ClassVar

import simpy

from policies.batching import BatchRule
from policies.dipsd.turns import PlanTurns
from simulator.compute import ComputeTrace, SpeedCursor
from simulator.profile import TargetLatency
from simulator.records import RequestRecord, Span


def succeed_at(event: simpy.Event, delay_s: float) -> None:
    """Trigger `event` `delay_s` from now: one scheduled event instead of a timeout plus a
    callback (this is what `Event.succeed` does, with a delay)."""
    event._ok = True
    event._value = None
    event.env.schedule(event, delay=delay_s)


class Job:
    """Work for the cloud; `service_s` (served alone) is known on arrival; `begin` runs when
    service starts, with the time it will end (later if batched with other jobs)."""

    __slots__ = ("arrived_s", "record", "service_s")

    batchable: ClassVar[bool] = False
    """Verified in one forward pass with other batchable jobs (NAVs, cloud decoding steps)."""
    nav: ClassVar[bool] = False
    """A NAV: what a DiP-SD plan's batches are made of."""
    span_label: ClassVar[str | None] = "prefill"
    """The cloud span's label in timelines; None: the job draws its own spans."""

    def __init__(self, service_s: float, record: RequestRecord) -> None:
        self.service_s = service_s
        self.record = record
        self.arrived_s = 0.0

    def begin(self, now_s: float, done_s: float) -> None:
        """Service starts at `now_s` and ends at `done_s`."""


class Cloud:
    """One verifier serving jobs in order of arrival, alone or in batches of NAVs.

    Jobs are announced with their arrival time and wait in a heap until then. A job's whole
    effect (its answer's arrival time) is computed when its service starts, so the cloud only
    wakes when it could start the next job: at max(next arrival, end of current service). That
    is one SimPy event per job. Should a job be announced that could start before the planned
    wake-up (several edges), a doorbell interrupts the sleep then.

    Batching (`max_batch` > 1): when free, the cloud takes the NAVs at the head of the queue
    (up to `max_batch`) and verifies them in one forward pass, whose time the target latency
    model gives for the summed positions and context and the batch size. With a window, it
    waits until the oldest queued NAV has waited `batch_window_s` or the batch is full.
    Prefills and cloud-only generations are served alone.

    With a single source of jobs (`exclusive`, one edge and no batching), announcement order is
    arrival order, so each job starts at max(arrival, end of the previous job) the moment it is
    announced, and the cloud costs no SimPy event. Both paths give identical results (tested).

    With a DiP-SD `plan` (edge indices per batch, in order), NAVs are verified batch by batch:
    the cloud waits until every still-active edge of the current batch has a NAV queued, then
    verifies them together and moves to the next batch. Other jobs are served as they come.
    """

    def __init__(
        self,
        env: simpy.Environment,
        timeline: list[Span] | None,
        target: TargetLatency,
        exclusive: bool = False,
        max_batch: int = 1,
        batch_window_s: float = 0.0,
        plan: tuple[tuple[int, ...], ...] | None = None,
        speed: ComputeTrace | None = None,
    ) -> None:
        self.env = env
        self.target = target
        self._speed = SpeedCursor(speed) if speed is not None else None
        """The target's speed over time (x its compute factor): a job's service is divided
        by the factor when it starts (and written back to its `service_s`)."""
        self.fastest = max(speed.fastest, 1.0) if speed is not None else 1.0
        """The largest speed factor: service_s / fastest bounds any job's service from below."""
        self.plan = plan
        self.turns = PlanTurns(plan) if plan else None
        """The plan's turns (policies/dipsd/turns.py: the server's rule too)."""
        self.exclusive = exclusive and max_batch == 1 and plan is None
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.rule = BatchRule(max_batch, batch_window_s)
        self.queue: deque[Job] = deque()
        self.busy_s = 0.0
        self.free_at = 0.0
        self.jobs = 0
        self.batches = 0
        self._arrivals: list[tuple[float, int, Job]] = []
        self._announced = 0
        self._wake: simpy.Event | None = None
        self._wake_at = math.inf
        self._ringing = False
        self._timeline = timeline
        self.process = None if self.exclusive else env.process(self._serve())

    def factor_at(self, t_s: float) -> float:
        """The target's speed factor at time t (1 without a compute trace)."""
        return self._speed.at(t_s) if self._speed is not None else 1.0

    def arrive(self, job: Job, at_s: float) -> None:
        """Announce that `job` joins the queue at time `at_s` (not earlier than now)."""
        if self.exclusive:
            job.arrived_s = at_s
            self._start_alone(job, at_s if at_s > self.free_at else self.free_at)
            return
        heapq.heappush(self._arrivals, (at_s, self._announced, job))
        self._announced += 1
        wake = self._wake
        if wake is None:
            return
        start = at_s if at_s > self.free_at else self.free_at
        if not wake.triggered:
            succeed_at(wake, start - self.env.now)
            self._wake_at = start
        elif start < self._wake_at:
            self.env.timeout(start - self.env.now).callbacks.append(self._ring)

    def retire(self, edge: int) -> None:
        """An edge has finished all its requests: plan batches stop waiting for it."""
        if self.turns is not None:
            self.turns.retire(edge)
        wake = self._wake
        if self.plan is None or wake is None:
            return
        if not wake.triggered:
            succeed_at(wake, 0.0)
            self._wake_at = self.env.now
        elif self._wake_at > self.env.now:  # asleep until a later arrival: ask the turns now
            self.env.timeout(0.0).callbacks.append(self._ring)

    def _ring(self, _event: simpy.Event) -> None:
        if self._wake is not None and not self._ringing and self.process is not None:
            self._ringing = True
            self.process.interrupt()

    def _start_alone(self, job: Job, now: float) -> None:
        """Begin serving `job` alone at `now` (the one-edge fast path calls it directly)."""
        service = job.service_s
        if self._speed is not None:
            service = job.service_s = service / self._speed.at(now)
        done = now + service
        job.begin(now, done)
        job.record.cloud_busy_s += service
        if self._timeline is not None and job.span_label is not None:
            self._job_span(job, now, done)
        self.busy_s += service
        self.free_at = done
        self.jobs += 1
        self.batches += 1

    def _job_span(self, job: Job, now: float, done: float) -> None:
        """The timeline's span of a job that draws none itself (every job but a NAV)."""
        record = job.record
        self._timeline.append(  # type: ignore[union-attr]
            Span("cloud", now, done, job.span_label, record.request, edge=record.edge)  # type: ignore[arg-type]
        )  # type: ignore[union-attr]

    def _start(self, jobs: list[Job], now: float) -> None:
        """Begin serving `jobs` together at `now` (which may lie ahead of SimPy's clock)."""
        if len(jobs) == 1:
            self._start_alone(jobs[0], now)
            return
        batch: list[Any] = jobs  # batchable jobs: `positions` and `context` each
        service = self.target.forward_s(
            sum(j.positions for j in batch),
            sum(j.context for j in batch),
            len(batch),
            sum(j.positions * j.context for j in batch),
        )
        if self._speed is not None:
            service /= self._speed.at(now)
        done = now + service
        share = service / len(jobs)
        for job in jobs:
            job.begin(now, done)
            job.record.cloud_busy_s += share
            if self._timeline is not None and job.span_label is not None:
                self._job_span(job, now, done)
        self.busy_s += service
        self.free_at = done
        self.jobs += len(jobs)
        self.batches += 1

    def _take_plan_batch(self) -> list[Job] | float:
        """Under a DiP-SD plan: a non-NAV job, or the current batch once complete, else wait."""
        queue, turns = self.queue, self.turns
        assert turns is not None
        picked = turns.take(queue, key=_plan_edge)
        if isinstance(picked, float):
            return picked
        batch = [queue[i] for i in picked]
        for job in batch:
            queue.remove(job)
        turns.started(batch, key=_plan_edge)
        return batch

    def _take_batch(self, now: float) -> list[Job] | float:
        """The jobs to start now, or the time to wait for (a batching window still open)."""
        queue = self.queue
        if self.plan is not None:
            return self._take_plan_batch()
        batch = self.rule.take(queue, now)  # the server's rule too (policies/batching.py)
        if isinstance(batch, float):
            return batch
        return [queue.popleft() for _ in batch]  # no keys: the batch is the queue's head

    def _serve(self) -> Generator[simpy.Event, Any, None]:
        env, queue, arrivals = self.env, self.queue, self._arrivals
        while True:
            now = env.now
            while arrivals and arrivals[0][0] <= now:
                at, _, job = heapq.heappop(arrivals)
                job.arrived_s = at
                queue.append(job)
            wait_until = math.inf
            if queue and self.free_at <= now:
                batch = self._take_batch(now)
                if isinstance(batch, list):
                    self._start(batch, now)
                    continue
                wait_until = batch
            elif queue:
                wait_until = self.free_at
            if arrivals:
                wait_until = min(wait_until, max(arrivals[0][0], self.free_at))
            wake = self._wake = env.event()
            self._wake_at = wait_until
            if wait_until < math.inf:
                succeed_at(wake, wait_until - now)
            with contextlib.suppress(simpy.Interrupt):
                yield wake
            self._wake = None
            self._ringing = False


def _plan_edge(job: Job) -> int | None:
    """A job's edge in a DiP-SD plan's turns (None: not a NAV, served alone first)."""
    return job.record.edge if job.nav else None
