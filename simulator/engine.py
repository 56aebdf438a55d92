"""The SimPy twin: an edge drafter, serialised uplink/downlink channels and a cloud verifier.

The edge runs a policy (policies/) exactly as the testbed does: it drafts token by token, tells
the policy, and sends batches or NAVs when told. To stay fast, the edge keeps a local clock that
may run ahead of SimPy's: drafting only touches the edge's own state, and anything it sends is
scheduled at its local time, which is never earlier than the simulation's. It synchronises with
SimPy only when an answer from the cloud could be due (conservative look-ahead), so a token
costs a few Python operations, not a SimPy event. The cloud serves jobs first come, first served
in arrival order; a NAV's answer is processed by the edge at the first token boundary after it
arrives (a draft step is not interruptible, as in llama.cpp).
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from policies.base import CostHints, Mode, Policy
from policies.registry import POLICIES, make_policy
from policies.seeding import policy_seed
from policies.session import ANSWER, DONE, DRAFT, ROUND, SEND, VERIFY, SpeculativeSession
from simulator.acceptance import AcceptanceModel
from simulator.dipsd_plan import fleet_plan, plan_batches
from simulator.fleet import edge_specs
from simulator.link import Channel
from simulator.payload import Payload, payload_for
from simulator.profile import DraftLatency, PowerProfile, SplitProfile, TargetLatency
from simulator.records import RequestRecord, Span
from simulator.scenario import PolicyEntry, Scenario


def succeed_at(event: simpy.Event, delay_s: float) -> None:
    """Trigger `event` `delay_s` from now: one scheduled event instead of a timeout plus a
    callback (this is what `Event.succeed` does, with a delay)."""
    event._ok = True
    event._value = None
    event.env.schedule(event, delay=delay_s)


class _Job:
    """Work for the cloud; `service_s` (served alone) is known on arrival; `begin` runs when
    service starts, with the time it will end (later if batched with other jobs)."""

    __slots__ = ("arrived_s", "record", "service_s")

    def __init__(self, service_s: float, record: RequestRecord) -> None:
        self.service_s = service_s
        self.record = record
        self.arrived_s = 0.0

    def begin(self, now_s: float, done_s: float) -> None:
        """Service starts at `now_s` and ends at `done_s`."""


class _PendingNav(_Job):
    """A NAV on its way: covers positions [start, end); `eta` known once the cloud starts it."""

    __slots__ = (
        "arrived",
        "context",
        "downlink",
        "end",
        "eta",
        "lower_bound",
        "positions",
        "result_bytes",
        "start",
        "timeline",
    )

    def __init__(
        self,
        start: int,
        end: int,
        service_s: float,
        record: RequestRecord,
        downlink: Channel,
        result_bytes: int,
        lower_bound: float,
        timeline: list[Span] | None,
        positions: int,
        context: int,
    ) -> None:
        self.service_s = service_s
        self.record = record
        self.arrived_s = 0.0
        self.positions, self.context = positions, context
        self.start, self.end = start, end
        self.eta: float | None = None
        self.lower_bound = lower_bound
        self.arrived: simpy.Event | None = None
        """Created by an edge that waits before the cloud starts: fires when the answer arrives."""
        self.downlink = downlink
        self.result_bytes = result_bytes
        self.timeline = timeline

    def begin(self, now_s: float, done_s: float) -> None:
        done = done_s
        tx = self.downlink.transmit(done, self.result_bytes)
        self.eta = tx.arrive_s
        self.record.downlink_bytes += self.result_bytes
        if self.timeline is not None:
            request, edge = self.record.request, self.record.edge
            self.timeline.append(
                Span("cloud", now_s, done, "NAV", request, self.start, self.end, edge=edge)
            )
            self.timeline.append(
                Span("downlink", tx.start_s, tx.finish_s, "answer", request, 0, 0, done, edge)
            )
        if self.arrived is not None:
            succeed_at(self.arrived, self.eta - now_s)


class _GenerateJob(_Job):
    """Cloud-only generation: prefill, then one forward per token, each token streamed down."""

    __slots__ = ("_bytes", "_downlink", "_n", "_prompt_len", "_target", "arrivals", "started")

    def __init__(
        self,
        target: TargetLatency,
        prompt_len: int,
        n_tokens: int,
        record: RequestRecord,
        downlink: Channel,
        token_bytes: int,
    ) -> None:
        service = target.prefill_s(prompt_len) + sum(
            target.forward_s(1, prompt_len + i) for i in range(1, n_tokens)
        )
        super().__init__(service, record)
        self.arrivals: list[float] = []
        self.started: simpy.Event | None = None
        self._target, self._downlink, self._bytes = target, downlink, token_bytes
        self._prompt_len, self._n = prompt_len, n_tokens

    def begin(self, now_s: float, done_s: float) -> None:
        t = now_s + self._target.prefill_s(self._prompt_len)
        for i in range(self._n):
            if i:
                t += self._target.forward_s(1, self._prompt_len + i)
            self.arrivals.append(self._downlink.transmit(t, self._bytes).arrive_s)
        self.record.downlink_bytes += self._n * self._bytes
        if self.started is not None:
            self.started.succeed()


class _ARStream:
    """One cloud-only generation served step by step (so steps of many edges batch together)."""

    __slots__ = (
        "arrivals",
        "cloud",
        "done",
        "downlink",
        "n_tokens",
        "prompt_len",
        "record",
        "target",
        "token_bytes",
    )

    def __init__(
        self,
        cloud: Cloud,
        record: RequestRecord,
        target: TargetLatency,
        downlink: Channel,
        prompt_len: int,
        n_tokens: int,
        token_bytes: int,
        done: simpy.Event,
    ) -> None:
        self.cloud, self.record, self.target, self.downlink = cloud, record, target, downlink
        self.prompt_len, self.n_tokens, self.token_bytes = prompt_len, n_tokens, token_bytes
        self.arrivals: list[float] = []
        self.done = done

    def emit(self, now_s: float, done_s: float) -> None:
        """A token was produced at `done_s`: stream it down, schedule the next step or finish."""
        arrival = self.downlink.transmit(done_s, self.token_bytes).arrive_s
        self.arrivals.append(arrival)
        self.record.downlink_bytes += self.token_bytes
        produced = len(self.arrivals)
        if produced < self.n_tokens:
            context = self.prompt_len + produced
            self.cloud.arrive(_ARStep(self, self.target.forward_s(1, context), context), done_s)
        else:
            succeed_at(self.done, arrival - self.cloud.env.now)


class _ARPrefill(_Job):
    """The prefill of a step-by-step cloud generation: it produces the first token."""

    __slots__ = ("stream",)

    def __init__(self, stream: _ARStream) -> None:
        super().__init__(stream.target.prefill_s(stream.prompt_len), stream.record)
        self.stream = stream

    def begin(self, now_s: float, done_s: float) -> None:
        self.stream.emit(now_s, done_s)


class _ARStep(_Job):
    """One decoding step of a cloud generation: one new position, batchable with NAVs."""

    __slots__ = ("context", "positions", "stream")

    def __init__(self, stream: _ARStream, service_s: float, context: int) -> None:
        super().__init__(service_s, stream.record)
        self.stream = stream
        self.positions, self.context = 1, context

    def begin(self, now_s: float, done_s: float) -> None:
        self.stream.emit(now_s, done_s)


class _SplitStep(_Job):
    """The cloud's share of one split-inference forward; its token goes down when done."""

    __slots__ = ("arrived", "downlink", "token_bytes")

    def __init__(
        self,
        service_s: float,
        record: RequestRecord,
        downlink: Channel,
        token_bytes: int,
        arrived: simpy.Event,
    ) -> None:
        super().__init__(service_s, record)
        self.downlink, self.token_bytes, self.arrived = downlink, token_bytes, arrived

    def begin(self, now_s: float, done_s: float) -> None:
        arrival = self.downlink.transmit(done_s, self.token_bytes).arrive_s
        self.record.downlink_bytes += self.token_bytes
        succeed_at(self.arrived, arrival - self.arrived.env.now)


BATCHABLE = (_PendingNav, _ARStep)


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
    ) -> None:
        self.env = env
        self.target = target
        self.plan = plan
        self._active = {edge for batch in plan for edge in batch} if plan else set()
        self._turn = 0
        self.exclusive = exclusive and max_batch == 1 and plan is None
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.queue: deque[_Job] = deque()
        self.busy_s = 0.0
        self.free_at = 0.0
        self.jobs = 0
        self.batches = 0
        self._arrivals: list[tuple[float, int, _Job]] = []
        self._announced = 0
        self._wake: simpy.Event | None = None
        self._wake_at = math.inf
        self._ringing = False
        self._timeline = timeline
        self.process = None if self.exclusive else env.process(self._serve())

    def arrive(self, job: _Job, at_s: float) -> None:
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
        self._active.discard(edge)
        wake = self._wake
        if self.plan is not None and wake is not None and not wake.triggered:
            succeed_at(wake, 0.0)
            self._wake_at = self.env.now

    def _ring(self, _event: simpy.Event) -> None:
        if self._wake is not None and not self._ringing and self.process is not None:
            self._ringing = True
            self.process.interrupt()

    def _start_alone(self, job: _Job, now: float) -> None:
        """`_start([job], now)` without the batch's bookkeeping (the one-edge fast path)."""
        service = job.service_s
        done = now + service
        job.begin(now, done)
        job.record.cloud_busy_s += service
        if self._timeline is not None and type(job) is not _PendingNav:
            self._job_span(job, now, done)
        self.busy_s += service
        self.free_at = done
        self.jobs += 1
        self.batches += 1

    def _job_span(self, job: _Job, now: float, done: float) -> None:
        """The timeline's span of a job that draws none itself (every job but a NAV)."""
        label = {_GenerateJob: "generate", _ARStep: "step"}.get(type(job), "prefill")
        record = job.record
        self._timeline.append(Span("cloud", now, done, label, record.request, edge=record.edge))  # type: ignore[union-attr]

    def _start(self, jobs: list[_Job], now: float) -> None:
        """Begin serving `jobs` together at `now` (which may lie ahead of SimPy's clock)."""
        if len(jobs) == 1:
            service = jobs[0].service_s
        else:
            batch: list[_PendingNav | _ARStep] = jobs  # type: ignore[assignment]
            service = self.target.forward_s(
                sum(j.positions for j in batch),
                sum(j.context for j in batch),
                len(batch),
                sum(j.positions * j.context for j in batch),
            )
        done = now + service
        share = service / len(jobs)
        for job in jobs:
            job.begin(now, done)
            job.record.cloud_busy_s += share
            if self._timeline is not None and type(job) is not _PendingNav:
                self._job_span(job, now, done)
        self.busy_s += service
        self.free_at = done
        self.jobs += len(jobs)
        self.batches += 1

    def _take_plan_batch(self) -> list[_Job] | float:
        """Under a DiP-SD plan: a non-NAV job, or the current batch once complete, else wait."""
        queue, plan = self.queue, self.plan
        assert plan is not None
        for job in queue:
            if type(job) is not _PendingNav:
                queue.remove(job)
                return [job]
        for _ in range(len(plan)):
            members = [edge for edge in plan[self._turn] if edge in self._active]
            if members:
                break
            self._turn = (self._turn + 1) % len(plan)
        else:
            return math.inf
        waiting = {job.record.edge: job for job in queue}
        if any(edge not in waiting for edge in members):
            return math.inf
        batch = [waiting[edge] for edge in members]
        for job in batch:
            queue.remove(job)
        self._turn = (self._turn + 1) % len(plan)
        return batch

    def _take_batch(self, now: float) -> list[_Job] | float:
        """The jobs to start now, or the time to wait for (a batching window still open)."""
        queue = self.queue
        if self.plan is not None:
            return self._take_plan_batch()
        if self.max_batch == 1 or type(queue[0]) not in BATCHABLE:
            return [queue.popleft()]
        count = 0
        for job in queue:
            if type(job) not in BATCHABLE or count == self.max_batch:
                break
            count += 1
        deadline = queue[0].arrived_s + self.batch_window_s
        if count < self.max_batch and count == len(queue) and now < deadline:
            return deadline
        return [queue.popleft() for _ in range(count)]

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


@dataclass
class EdgeConfig:
    """Everything the edge process needs, resolved from a scenario."""

    draft: DraftLatency
    target: TargetLatency
    power: PowerProfile
    payload: Payload
    compute_factor: float
    max_draft_tokens: int
    prompt_len: int
    max_new_tokens: int
    requests: int
    seed: int
    edge: int = 0
    start_s: float = 0.0
    arrivals: tuple[float, ...] | None = None
    split: SplitProfile | None = None


@dataclass
class SessionStats:
    """Edge-session quantities outside any request (start-up probes)."""

    probe_messages: int = 0
    probe_bytes: int = 0
    probe_time_s: float = 0.0


@dataclass
class SimResult:
    """The outcome of simulating one policy on one scenario point with one seed."""

    records: list[RequestRecord]
    session: SessionStats
    policy_state: dict[str, float]
    cloud_busy_s: float
    end_s: float
    timeline: list[Span] | None = field(default=None)
    edges: int = 1
    cloud_batches: int = 0
    cloud_jobs: int = 0
    plan_throughput_tokens_per_s: float = math.nan
    """DiP-SD: the optimiser's closed-form throughput for the plan the run executed."""


class Edge:
    """An edge device running one policy over its request stream."""

    def __init__(
        self,
        env: simpy.Environment,
        config: EdgeConfig,
        policy: Policy,
        cloud: Cloud,
        uplink: Channel,
        downlink: Channel,
        acceptance: AcceptanceModel,
        timeline: list[Span] | None,
    ) -> None:
        self.env, self.config, self.policy, self.cloud = env, config, policy, cloud
        self.up, self.down, self.acceptance = uplink, downlink, acceptance
        self.records: list[RequestRecord] = []
        self.session = SessionStats()
        self.timeline = timeline
        self.core = SpeculativeSession(policy, config.max_draft_tokens)
        inv_factor = 1.0 / config.compute_factor
        decode_base = config.draft.decode_base_s * inv_factor
        decode_ctx = config.draft.decode_per_context_token_s * inv_factor
        self._draft_s = [
            decode_base + decode_ctx * (config.prompt_len + position)
            for position in range(config.max_new_tokens)
        ]
        """The draft's time for the token at each output position (the same every request)."""
        self.process = env.process(self._run())

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env, cfg = self.env, self.config
        if cfg.start_s > env.now:
            yield env.timeout(cfg.start_s - env.now)
        yield from self._probe()
        for index in range(cfg.requests):
            arrived = env.now
            if cfg.arrivals is not None:
                arrived = cfg.arrivals[index]
                if arrived > env.now:
                    yield env.timeout(arrived - env.now)
            if self.policy.mode == Mode.CLOUD_AUTOREGRESSIVE:
                yield from self._cloud_request(index, arrived)
            elif self.policy.mode == Mode.SPLIT_INFERENCE:
                yield from self._split_request(index, arrived)
            else:
                yield from self._speculative_request(index, arrived)
        self.cloud.retire(cfg.edge)

    def _probe(self) -> Generator[simpy.Event, Any, None]:
        """PipeSD-style start-up probes: uploads of a few token sizes, one after another."""
        t = self.env.now
        for size in self.policy.startup_probe_sizes():
            n_bytes = self.config.payload.batch_bytes(size)
            tx = self.up.transmit(t, n_bytes)
            answered = tx.arrive_s + self.down.min_delivery_s()
            self.up.defer(answered, self.config.payload.ack_bytes)  # the answer's TCP ACKs
            self.policy.on_upload(size, answered - t)
            t = answered
            self.session.probe_messages += 1
            self.session.probe_bytes += n_bytes
        self.session.probe_time_s = t - self.env.now
        if t > self.env.now:
            yield self.env.timeout(t - self.env.now)

    def _finish(self, record: RequestRecord) -> None:
        power = self.config.power
        idle_s = max(record.end_s - record.start_s - record.edge_busy_s, 0.0)
        record.edge_energy_j = power.edge_busy_w * record.edge_busy_s + power.edge_idle_w * idle_s
        record.cloud_energy_j = power.gpu_active_w * record.cloud_busy_s
        record.radio_energy_j = (
            power.radio_uplink_j_per_byte * record.uplink_bytes
            + power.radio_downlink_j_per_byte * record.downlink_bytes
        )
        self.records.append(record)

    def _cloud_request(self, index: int, arrived: float) -> Generator[simpy.Event, Any, None]:
        env, cfg = self.env, self.config
        record = RequestRecord(
            request=index, edge=cfg.edge, prompt_len=cfg.prompt_len, start_s=arrived
        )
        prompt = cfg.payload.prompt_bytes(cfg.prompt_len)
        tx = self.up.transmit(env.now, prompt)
        record.uplink_bytes += prompt
        record.uplink_messages += 1
        if not self.cloud.exclusive:
            done = env.event()
            stream = _ARStream(
                self.cloud,
                record,
                cfg.target,
                self.down,
                cfg.prompt_len,
                cfg.max_new_tokens,
                cfg.payload.stream_token_bytes(),
                done,
            )
            self.cloud.arrive(_ARPrefill(stream), tx.arrive_s)
            yield done
            record.new_tokens = cfg.max_new_tokens
            record.first_token_s, record.end_s = stream.arrivals[0], stream.arrivals[-1]
            self._finish(record)
            return
        job = _GenerateJob(
            cfg.target,
            cfg.prompt_len,
            cfg.max_new_tokens,
            record,
            self.down,
            cfg.payload.stream_token_bytes(),
        )
        job.started = env.event()
        self.cloud.arrive(job, tx.arrive_s)
        yield job.started
        yield env.timeout(job.arrivals[-1] - env.now)
        record.new_tokens = cfg.max_new_tokens
        record.first_token_s, record.end_s = job.arrivals[0], job.arrivals[-1]
        self._finish(record)

    def _split_request(self, index: int, arrived: float) -> Generator[simpy.Event, Any, None]:
        """Split inference: per token, the edge's layers, a hidden state up, the cloud's rest."""
        env, cfg, split = self.env, self.config, self.config.split
        assert split is not None
        fraction = self.policy.params.edge_fraction or split.edge_fraction
        record = RequestRecord(
            request=index, edge=cfg.edge, prompt_len=cfg.prompt_len, start_s=arrived
        )
        token_bytes = cfg.payload.stream_token_bytes()
        header = cfg.payload.message_header
        edge_step = fraction * split.edge_forward_s / cfg.compute_factor
        t = (
            env.now
            + fraction * split.edge_prefill_per_token_s * cfg.prompt_len / cfg.compute_factor
        )
        record.edge_busy_s += t - env.now
        n_bytes = header + cfg.prompt_len * split.hidden_state_bytes
        service = (1.0 - fraction) * cfg.target.prefill_s(cfg.prompt_len)
        for produced in range(cfg.max_new_tokens):
            tx = self.up.transmit(t, n_bytes)
            record.uplink_bytes += n_bytes
            record.uplink_messages += 1
            arrived_event = env.event()
            step = _SplitStep(service, record, self.down, token_bytes, arrived_event)
            self.cloud.arrive(step, tx.arrive_s)
            yield arrived_event
            if produced == 0:
                record.first_token_s = env.now
            t = env.now + edge_step
            record.edge_busy_s += edge_step
            n_bytes = header + split.hidden_state_bytes
            service = (1.0 - fraction) * cfg.target.forward_s(1, cfg.prompt_len + produced + 1)
        record.new_tokens = cfg.max_new_tokens
        record.end_s = env.now
        self._finish(record)

    def _true_costs(self, t: float, context: int) -> CostHints:
        """α, β, γ and the NAV round trip at time t, as an oracle is allowed to know them."""
        cfg, up, down = self.config, self.up, self.down
        answer_bytes = cfg.payload.result_bytes(1)
        return CostHints(
            up.overhead_s,
            cfg.payload.per_draft_token * 8.0 / (up.bandwidth.at(t) * 1e6),
            cfg.draft.decode_s(context) / cfg.compute_factor,
            2 * up.latency_s
            + cfg.target.forward_s(2, context)
            + down.overhead_s
            + down.bandwidth.finish_time(t, answer_bytes)
            - t,
        )

    def _speculative_request(self, index: int, arrived: float) -> Generator[simpy.Event, Any, None]:
        """One request under a speculative policy (see the module docstring for the clock)."""
        env, cfg, up, down = self.env, self.config, self.up, self.down
        payload, timeline, core = cfg.payload, self.timeline, self.core
        n_new, prompt_len = cfg.max_new_tokens, cfg.prompt_len
        record = RequestRecord(request=index, edge=cfg.edge, prompt_len=prompt_len, start_s=arrived)
        stream = self.acceptance.stream(cfg.seed, cfg.edge, index, n_new)
        confidence, off_path = stream.confidence, stream.off_path_confidence
        next_reject = stream.next_reject
        n_off = len(off_path)
        t = env.now
        prompt = payload.prompt_bytes(prompt_len)
        tx = up.transmit(t, prompt)
        record.uplink_bytes += prompt
        record.uplink_messages += 1
        self.cloud.arrive(_Job(cfg.target.prefill_s(prompt_len), record), tx.arrive_s)
        inv_factor = 1.0 / cfg.compute_factor
        prefill = cfg.draft.prefill_s(prompt_len) * inv_factor
        t += prefill
        record.edge_busy_s += prefill
        step = core.begin(record, prompt_len, n_new, record.start_s)

        draft_s = self._draft_s
        per_token_bytes, header = payload.per_draft_token, payload.message_header
        ack_bytes = payload.ack_bytes
        result_bytes = payload.result_bytes
        target = cfg.target
        min_down = down.min_delivery_s()
        drafted, sent = core.drafted, core.sent
        reports: list[tuple[float, int, float]] = []  # heap: (known at, tokens, duration)

        committed = 0  # core.committed, which changes only with an answer
        on_path_end = next_reject[0]  # drafts up to the first rejected position are on path
        off_index = 0
        nav: _PendingNav | None = None

        def send(now: float, nav_request: bool) -> int:
            """Send [sent_end, drafted_end) as a NAV or an upload; returns the next step."""
            nonlocal nav
            sent_end, drafted_end = core.sent_end, core.drafted_end
            n_tokens = drafted_end - sent_end
            n_bytes = header + n_tokens * per_token_bytes
            tx = up.transmit(now, n_bytes)
            record.uplink_bytes += n_bytes + ack_bytes
            record.uplink_messages += 1
            answered = tx.arrive_s + min_down  # an upload's answer comes straight back
            m = drafted_end - committed
            context = prompt_len + committed  # KV held before the pass, as profiled
            service = target.forward_s(m + 1, context) if nav_request else 0.0
            if not nav_request:
                up.defer(answered, ack_bytes)
            if n_tokens:  # the edge learns the duration with the answer (a NAV's after its pass)
                heapq.heappush(reports, (answered + service, n_tokens, answered - now))
            if timeline is not None:
                kind = "NAV" if nav_request else "batch"
                timeline.append(
                    Span(
                        "uplink",
                        tx.start_s,
                        tx.finish_s,
                        kind,
                        index,
                        sent_end,
                        drafted_end,
                        now,
                        cfg.edge,
                    )
                )
            if nav_request:
                nav = _PendingNav(
                    committed,
                    drafted_end,
                    service,
                    record,
                    down,
                    result_bytes(m),
                    answered + service,
                    timeline,
                    m + 1,
                    context,
                )
                self.cloud.arrive(nav, tx.arrive_s)
            return sent(nav_request)

        while step != DONE:
            while reports and reports[0][0] <= t:
                _, n_tokens, duration = heapq.heappop(reports)
                core.uploaded(n_tokens, duration)
            if nav is not None:
                eta = nav.eta
                if step == DRAFT and (eta is None or eta > t):  # draft on while pending
                    if eta is None and t >= nav.lower_bound:
                        if t > env.now:
                            yield env.timeout(t - env.now)
                        if nav.eta is None:
                            nav.lower_bound = t + nav.service_s + min_down
                        continue
                else:
                    if eta is None:
                        nav.arrived = env.event()
                        yield nav.arrived
                    elif eta > t:
                        t = eta
                    if t > env.now:
                        yield env.timeout(t - env.now)
                    t = env.now
                    # -- the answer is processed at local time t ----------------------------
                    up.defer(nav.eta, ack_bytes)  # type: ignore[arg-type]
                    start, end = nav.start, nav.end
                    reject = next_reject[start]
                    accepted = min(reject - start, end - start)
                    if timeline is not None:
                        label = f"{accepted}/{end - start} accepted"
                        timeline.append(
                            Span("result", nav.eta, t, label, index, start, end, edge=cfg.edge)  # type: ignore[arg-type]
                        )
                    nav = None
                    step = core.answered(accepted, reject > end, t)
                    committed = core.committed
                    if step != DONE:
                        on_path_end = next_reject[committed]
                    if step in (SEND, VERIFY):
                        step = send(t, step == VERIFY)
                    continue
            elif step:  # not DRAFT
                if step == ROUND:
                    step = core.round_start(
                        next_reject[committed] - committed,
                        self._true_costs(t, prompt_len + committed),
                    )
                if step == VERIFY:
                    step = send(t, True)
                continue
            # -- draft one token ------------------------------------------------------------------
            position = core.drafted_end
            if position <= on_path_end:
                conf = confidence[position]
            else:
                conf = off_path[off_index % n_off]
                off_index += 1
            dt = draft_s[position]
            if timeline is not None:
                timeline.append(
                    Span("draft", t, t + dt, "draft", index, position, position + 1, edge=cfg.edge)
                )
            t += dt
            step = drafted(conf, dt)
            if step and step != ANSWER:  # SEND or VERIFY
                step = send(t, step == VERIFY)

        if t > env.now:
            yield env.timeout(t - env.now)
        core.finish(t)
        self._finish(record)


def simulate(
    scenario: Scenario,
    entry: PolicyEntry,
    seed: int,
    record_timeline: bool = False,
    exclusive_cloud: bool = True,
) -> SimResult:
    """Simulate one policy on every edge of one scenario point with one seed.

    Each edge runs its own instance of the policy. `exclusive_cloud=False` forces the cloud's
    general queueing process even for one edge (the tests check the fast path changes nothing).
    """
    profile = scenario.profile.profile
    model = scenario.model
    env = simpy.Environment()
    timeline: list[Span] | None = [] if record_timeline else None
    acceptance_spec = model.acceptance or profile.acceptance
    acceptance_dir = scenario.base_dir if model.acceptance else scenario.profile.path.parent
    acceptance = AcceptanceModel(acceptance_spec, acceptance_dir)
    specs = edge_specs(scenario, seed)
    policy_class = POLICIES[entry.name][1]
    plan = fleet_plan(scenario, specs) if getattr(policy_class, "uses_fleet_plan", False) else None
    target_latency = profile.target_latency.faster(model.cloud.compute_factor)
    cloud = Cloud(
        env,
        timeline,
        target_latency,
        exclusive=exclusive_cloud and len(specs) == 1,
        max_batch=model.cloud.max_batch,
        batch_window_s=model.cloud.batch_window_s,
        plan=plan_batches(plan) if plan else None,
    )
    payload = payload_for(profile.payload, model.payload)
    edges = []
    policy_states = []
    acceptance_models: dict[int, AcceptanceModel] = {}
    for spec in specs:
        own = spec.profile.profile
        if own is not profile and id(own) not in acceptance_models:
            spec_dir = spec.profile.path.parent
            acceptance_models[id(own)] = AcceptanceModel(
                model.acceptance or own.acceptance,
                scenario.base_dir if model.acceptance else spec_dir,
            )
        config = EdgeConfig(
            draft=own.draft_latency,
            target=target_latency,
            power=own.power,
            payload=payload if own is profile else payload_for(own.payload, model.payload),
            compute_factor=spec.compute_factor,
            max_draft_tokens=model.edge.max_draft_tokens,
            prompt_len=model.prompts.prompt_len,
            max_new_tokens=model.prompts.max_new_tokens,
            requests=spec.requests,
            seed=seed,
            edge=spec.index,
            start_s=spec.start_s,
            arrivals=spec.arrivals,
            split=own.split,
        )
        params = entry.params
        if plan is not None:
            params = params.model_copy(update={"draft_len": plan.lengths[spec.index]})
        policy = make_policy(entry.name, params, policy_seed(seed, entry.label, spec.index))
        policy_states.append(policy)
        uplink = Channel(
            spec.uplink, spec.uplink_overhead_s, spec.one_way_latency_s, spec.burst_bytes
        )
        downlink = Channel(
            spec.downlink, spec.downlink_overhead_s, spec.one_way_latency_s, spec.burst_bytes
        )
        edge_acceptance = acceptance if own is profile else acceptance_models[id(own)]
        edges.append(Edge(env, config, policy, cloud, uplink, downlink, edge_acceptance, timeline))
    env.run(until=env.all_of([edge.process for edge in edges]))
    session = SessionStats()
    for edge in edges:
        session.probe_messages += edge.session.probe_messages
        session.probe_bytes += edge.session.probe_bytes
        session.probe_time_s = max(session.probe_time_s, edge.session.probe_time_s)
    return SimResult(
        records=[r for edge in edges for r in edge.records],
        session=session,
        policy_state=policy_states[0].state(),
        cloud_busy_s=cloud.busy_s,
        end_s=env.now,
        timeline=timeline,
        edges=len(edges),
        cloud_batches=cloud.batches,
        cloud_jobs=cloud.jobs,
        plan_throughput_tokens_per_s=plan.throughput_tokens_per_s if plan else math.nan,
    )
