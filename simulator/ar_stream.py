"""Cloud-side token streams of the SimPy twin: cloud-only generation and split inference.

The cloud generates every token (Mode.CLOUD_AUTOREGRESSIVE) either as one job (a single edge:
prefill plus one forward per token) or step by step (`ARStream`: each step a batchable job, so
the steps of many edges share forward passes). Split inference (Mode.SPLIT_INFERENCE) runs the
target's first layers on the edge and the rest in the cloud, one token at a time.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import simpy

from simulator.cloud import Cloud, Job, succeed_at
from simulator.link import Channel
from simulator.profile import TargetLatency
from simulator.records import RequestRecord

if TYPE_CHECKING:
    from simulator.edge import Edge


class GenerateJob(Job):
    """Cloud-only generation: prefill, then one forward per token, each token streamed down."""

    __slots__ = (
        "_bytes",
        "_downlink",
        "_n",
        "_prompt_len",
        "_target",
        "_work_s",
        "arrivals",
        "started",
    )

    span_label = "generate"

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
        self._work_s = service  # the cloud divides service_s by a compute trace's factor
        self.arrivals: list[float] = []
        self.started: simpy.Event | None = None
        self._target, self._downlink, self._bytes = target, downlink, token_bytes
        self._prompt_len, self._n = prompt_len, n_tokens

    def begin(self, now_s: float, done_s: float) -> None:
        stretch = self.service_s / self._work_s  # 1 unless a compute trace slowed the job
        t = now_s + self._target.prefill_s(self._prompt_len) * stretch
        for i in range(self._n):
            if i:
                t += self._target.forward_s(1, self._prompt_len + i) * stretch
            self.arrivals.append(self._downlink.transmit(t, self._bytes).arrive_s)
        self.record.downlink_bytes += self._n * self._bytes
        if self.started is not None:
            self.started.succeed()


class ARStream:
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
            self.cloud.arrive(ARStep(self, self.target.forward_s(1, context), context), done_s)
        else:
            succeed_at(self.done, arrival - self.cloud.env.now)


class ARPrefill(Job):
    """The prefill of a step-by-step cloud generation: it produces the first token."""

    __slots__ = ("stream",)

    def __init__(self, stream: ARStream) -> None:
        super().__init__(stream.target.prefill_s(stream.prompt_len), stream.record)
        self.stream = stream

    def begin(self, now_s: float, done_s: float) -> None:
        self.stream.emit(now_s, done_s)


class ARStep(Job):
    """One decoding step of a cloud generation: one new position, batchable with NAVs."""

    __slots__ = ("context", "positions", "stream")

    batchable = True
    span_label = "step"

    def __init__(self, stream: ARStream, service_s: float, context: int) -> None:
        super().__init__(service_s, stream.record)
        self.stream = stream
        self.positions, self.context = 1, context

    def begin(self, now_s: float, done_s: float) -> None:
        self.stream.emit(now_s, done_s)


class SplitStep(Job):
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


def cloud_request(edge: Edge, index: int, arrived: float) -> Generator[simpy.Event, Any, None]:
    """One request generated by the cloud alone (Mode.CLOUD_AUTOREGRESSIVE), its tokens
    streamed down: step by step with other edges (their steps batch), else as one job."""
    env, cfg = edge.env, edge.config
    record = RequestRecord(request=index, edge=cfg.edge, prompt_len=cfg.prompt_len, start_s=arrived)
    prompt = cfg.payload.prompt_bytes(cfg.prompt_len)
    tx = edge.up.transmit(env.now, prompt)
    record.uplink_bytes += prompt
    record.uplink_messages += 1
    if not edge.cloud.exclusive:
        done = env.event()
        stream = ARStream(
            edge.cloud,
            record,
            cfg.target,
            edge.down,
            cfg.prompt_len,
            cfg.max_new_tokens,
            cfg.payload.stream_token_bytes(),
            done,
        )
        edge.cloud.arrive(ARPrefill(stream), tx.arrive_s)
        yield done
        record.new_tokens = cfg.max_new_tokens
        record.first_token_s, record.end_s = stream.arrivals[0], stream.arrivals[-1]
        edge.finish(record)
        return
    job = GenerateJob(
        cfg.target,
        cfg.prompt_len,
        cfg.max_new_tokens,
        record,
        edge.down,
        cfg.payload.stream_token_bytes(),
    )
    job.started = env.event()
    edge.cloud.arrive(job, tx.arrive_s)
    yield job.started
    yield env.timeout(job.arrivals[-1] - env.now)
    record.new_tokens = cfg.max_new_tokens
    record.first_token_s, record.end_s = job.arrivals[0], job.arrivals[-1]
    edge.finish(record)


def split_request(edge: Edge, index: int, arrived: float) -> Generator[simpy.Event, Any, None]:
    """Split inference: per token, the edge's layers, a hidden state up, the cloud's rest."""
    env, cfg, split = edge.env, edge.config, edge.config.split
    assert split is not None
    fraction = edge.policy.split_edge_fraction(split.edge_fraction)
    record = RequestRecord(request=index, edge=cfg.edge, prompt_len=cfg.prompt_len, start_s=arrived)
    token_bytes = cfg.payload.stream_token_bytes()
    header = cfg.payload.message_header
    edge_step = fraction * split.edge_forward_s / cfg.compute_factor
    t = env.now + fraction * split.edge_prefill_per_token_s * cfg.prompt_len / cfg.compute_factor
    record.edge_busy_s += t - env.now
    n_bytes = header + cfg.prompt_len * split.hidden_state_bytes
    service = (1.0 - fraction) * cfg.target.prefill_s(cfg.prompt_len)
    for produced in range(cfg.max_new_tokens):
        tx = edge.up.transmit(t, n_bytes)
        record.uplink_bytes += n_bytes
        record.uplink_messages += 1
        arrived_event = env.event()
        step = SplitStep(service, record, edge.down, token_bytes, arrived_event)
        edge.cloud.arrive(step, tx.arrive_s)
        yield arrived_event
        if produced == 0:
            record.first_token_s = env.now
        step_s = edge_step if cfg.speed is None else cfg.speed.scale(env.now, edge_step)
        t = env.now + step_s
        record.edge_busy_s += step_s
        n_bytes = header + split.hidden_state_bytes
        service = (1.0 - fraction) * cfg.target.forward_s(1, cfg.prompt_len + produced + 1)
    record.new_tokens = cfg.max_new_tokens
    record.end_s = env.now
    edge.finish(record)
