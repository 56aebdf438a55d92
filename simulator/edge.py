"""The edge of the SimPy twin: a drafter running one policy over its request stream.

A speculative request runs through the bookkeeping core (policies/session.py), exactly as on
the testbed: the edge drafts token by token, tells the core, and sends batches or NAVs when
told. To stay fast, the edge keeps a local clock that may run ahead of SimPy's: drafting only
touches the edge's own state, and anything it sends is scheduled at its local time, which is
never earlier than the simulation's. It synchronises with SimPy only when an answer from the
cloud could be due (conservative look-ahead), so a token costs a few Python operations, not a
SimPy event. A NAV's answer is processed by the edge at the first token boundary after it
arrives (a draft step is not interruptible, as in llama.cpp).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from policies.base import CostHints, Mode, Policy
from policies.picospec.topk_acceptance import TopKEffect
from policies.session import ANSWER, DONE, DRAFT, ROUND, SEND, VERIFY, SpeculativeSession
from simulator.acceptance import AcceptanceModel
from simulator.ar_stream import cloud_request, split_request
from simulator.cloud import Cloud, Job, succeed_at
from simulator.compute import EdgeSpeed
from simulator.link import Channel
from simulator.payload import Payload
from simulator.profile import DraftLatency, PowerProfile, SplitProfile, TargetLatency
from simulator.records import RequestRecord, Span

_CLOUD_STREAMS = (Mode.CLOUD_AUTOREGRESSIVE, Mode.SPLIT_INFERENCE)
"""Modes whose requests run on the cloud's token streams (simulator/ar_stream.py), in SimPy."""


class PendingNav(Job):
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

    batchable = True
    nav = True
    span_label = None  # a NAV draws its cloud and downlink spans itself

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
    speed: EdgeSpeed | None = None
    """A compute trace and/or thermal throttling (simulator/compute.py); None: constant."""
    topk: TopKEffect | None = None
    """Acceptance with a top-K downlink (PicoSpec's edge-side verification); None: exact."""


@dataclass
class SessionStats:
    """Edge-session quantities outside any request (start-up probes)."""

    probe_messages: int = 0
    probe_bytes: int = 0
    probe_time_s: float = 0.0


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
        services: dict[tuple[int, int], float] | None = None,
    ) -> None:
        self.env, self.config, self.policy, self.cloud = env, config, policy, cloud
        self.up, self.down, self.acceptance = uplink, downlink, acceptance
        self.records: list[RequestRecord] = []
        self.session = SessionStats()
        self.timeline = timeline
        self.core = SpeculativeSession(policy, config.max_draft_tokens)
        self._tuner_step_s = policy.tuner_step_s / config.compute_factor
        """One step of the policy's online tuner on this edge (charged after an answer)."""
        inv_factor = 1.0 / config.compute_factor
        decode_base = config.draft.decode_base_s * inv_factor
        decode_ctx = config.draft.decode_per_context_token_s * inv_factor
        self._draft_s = [
            decode_base + decode_ctx * (config.prompt_len + position)
            for position in range(config.max_new_tokens)
        ]
        """The draft's time for the token at each output position (the same every request)."""
        self._services = {} if services is None else services
        """A NAV's service time by (drafts, context), shared by a run's edges (one target)."""
        self._alone = cloud.exclusive and policy.mode not in _CLOUD_STREAMS and env.now == 0.0
        """The only process (one edge, the cloud's fast path): the edge keeps SimPy's clock
        itself (`_now`) and yields once, at the end (exactly: from 0), not once per answer."""
        self._now = env.now
        self.process = env.process(self._run())

    def _wait_until(self, t: float) -> simpy.Event | None:
        """Advance the clock to `t` when later: alone, as SimPy's arithmetic would (now +
        (t - now), so the times are bit-identical) and None; else the timeout to yield."""
        if not self._alone:
            return self.env.timeout(t - self.env.now) if t > self.env.now else None
        if t > self._now:
            self._now += t - self._now
        return None

    def now(self) -> float:
        """The simulation's time as this edge sees it (see `_alone`)."""
        return self._now if self._alone else self.env.now

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env, cfg = self.env, self.config
        if (wait := self._wait_until(cfg.start_s)) is not None:
            yield wait
        yield from self._probe()
        for index in range(cfg.requests):
            arrived = self.now()
            if cfg.arrivals is not None:
                arrived = cfg.arrivals[index]
                if (wait := self._wait_until(arrived)) is not None:
                    yield wait
            if self.policy.mode == Mode.CLOUD_AUTOREGRESSIVE:
                yield from cloud_request(self, index, arrived)
            elif self.policy.mode == Mode.SPLIT_INFERENCE:
                yield from split_request(self, index, arrived)
            else:
                yield from self._speculative_request(index, arrived)
        if self._alone and self._now > 0.0:  # SimPy's clock lands on 0 + now == now
            yield env.timeout(self._now)
        self.cloud.retire(cfg.edge)

    def _probe(self) -> Generator[simpy.Event, Any, None]:
        """PipeSD-style start-up probes: uploads of a few token sizes, one after another."""
        t = begun = self.now()
        for size in self.policy.startup_probe_sizes():
            n_bytes = self.config.payload.batch_bytes(size)
            tx = self.up.transmit(t, n_bytes)
            answered = tx.arrive_s + self.down.min_delivery_s()
            self.up.defer(answered, self.config.payload.ack_bytes)  # the answer's TCP ACKs
            self.policy.on_upload(size, answered - t)
            t = answered
            self.session.probe_messages += 1
            self.session.probe_bytes += n_bytes
        self.session.probe_time_s = t - begun
        if (wait := self._wait_until(t)) is not None:
            yield wait

    def finish(self, record: RequestRecord) -> None:
        """A request is complete: its energies from the profile's power figures; keep it."""
        power = self.config.power
        idle_s = max(record.end_s - record.start_s - record.edge_busy_s, 0.0)
        record.edge_energy_j = power.edge_busy_w * record.edge_busy_s + power.edge_idle_w * idle_s
        record.cloud_energy_j = power.gpu_active_w * record.cloud_busy_s
        record.radio_energy_j = (
            power.radio_uplink_j_per_byte * record.uplink_bytes
            + power.radio_downlink_j_per_byte * record.downlink_bytes
        )
        self.records.append(record)

    def _true_costs(self, t: float, context: int) -> CostHints:
        """α, β, γ and the NAV round trip at time t, as an oracle is allowed to know them."""
        cfg, up, down = self.config, self.up, self.down
        answer_bytes = cfg.payload.result_bytes(1)
        edge_factor = cfg.compute_factor
        if cfg.speed is not None:  # a compute trace or thermal throttling: the speed at t
            edge_factor *= cfg.speed.factor(t)
        return CostHints(
            up.overhead_s,
            cfg.payload.per_draft_token * 8.0 / (up.bandwidth.at(t) * 1e6),
            cfg.draft.decode_s(context) / edge_factor,
            2 * up.latency_s
            + cfg.target.forward_s(2, context) / self.cloud.factor_at(t)
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
        stream = self.acceptance.stream(cfg.seed, cfg.edge, index, n_new, cfg.topk)
        confidence, off_path = stream.confidence, stream.off_path_confidence
        next_reject = stream.next_reject
        n_off = len(off_path)
        alone = self._alone
        t = now = self.now()  # alone: SimPy's clock as the edge keeps it (see `_alone`)
        prompt = payload.prompt_bytes(prompt_len)
        tx = up.transmit(t, prompt)
        record.uplink_bytes += prompt
        record.uplink_messages += 1
        self.cloud.arrive(Job(cfg.target.prefill_s(prompt_len), record), tx.arrive_s)
        inv_factor = 1.0 / cfg.compute_factor
        prefill = cfg.draft.prefill_s(prompt_len) * inv_factor
        speed = cfg.speed
        if speed is not None:
            prefill = speed.scale_prefill(t, prefill)
        speed_next_s = speed.next_s if speed is not None else math.inf
        t += prefill
        record.edge_busy_s += prefill
        step = core.begin(record, prompt_len, n_new, record.start_s)

        draft_s = self._draft_s
        per_token_bytes, header = payload.per_draft_token, payload.message_header
        ack_bytes = payload.ack_bytes
        result_bytes = payload.result_bytes
        target = cfg.target
        min_down = down.min_delivery_s()
        soonest = 1.0 / self.cloud.fastest  # of a service: a compute trace may speed it up
        drafted, sent, uploaded = core.drafted, core.sent, core.uploaded
        reports: list[tuple[float, int, float]] = []  # heap: (known at, tokens, duration)
        next_report_s = math.inf  # reports[0][0], the soonest a report is known
        # when the last earlier message is answered: an upload sent before then may queue
        # behind it, so its duration is not reported (what the edge knows, as on the testbed)
        link_idle_at = tx.arrive_s + min_down

        committed = 0  # core.committed, which changes only with an answer
        on_path_end = next_reject[0]  # drafts up to the first rejected position are on path
        off_index = 0
        nav: PendingNav | None = None
        policy, tuner_step_s = self.policy, self._tuner_step_s
        tuned = policy.tuner_steps  # the policy's tuner steps already charged
        services, arrive, heappush = self._services, self.cloud.arrive, heapq.heappush
        reporting = type(policy).on_upload is not Policy.on_upload  # else nobody hears reports

        def send(now: float, nav_request: bool) -> int:
            """Send [sent_end, drafted_end) as a NAV or an upload; returns the next step."""
            nonlocal nav, link_idle_at, next_report_s
            sent_end, drafted_end = core.sent_end, core.drafted_end
            n_tokens = drafted_end - sent_end
            n_bytes = header + n_tokens * per_token_bytes
            tx = up.transmit(now, n_bytes)
            record.uplink_bytes += n_bytes + ack_bytes
            record.uplink_messages += 1
            answered = tx.arrive_s + min_down  # an upload's answer comes straight back
            m = drafted_end - committed
            context = prompt_len + committed  # KV held before the pass, as profiled
            if nav_request:
                service = services.get((m, context))  # a pure function of (m, context)
                if service is None:
                    service = services[m, context] = target.forward_s(m + 1, context)
            else:
                service = 0.0
                if ack_bytes:  # (defer ignores 0 bytes: the call skipped)
                    up.defer(answered, ack_bytes)
            if reporting:
                if n_tokens and now >= link_idle_at:  # learnt with the answer (a NAV's: its pass)
                    heappush(reports, (answered + service, n_tokens, answered - now))
                    next_report_s = reports[0][0]
                if answered > link_idle_at:
                    link_idle_at = answered
            if timeline is not None:
                kind = "NAV" if nav_request else "batch"
                args = (tx.start_s, tx.finish_s, kind, index, sent_end, drafted_end, now, cfg.edge)
                timeline.append(Span("uplink", *args))
            if nav_request:
                nav = PendingNav(
                    committed,
                    drafted_end,
                    service,
                    record,
                    down,
                    result_bytes(m),
                    answered + service * soonest,
                    timeline,
                    m + 1,
                    context,
                )
                arrive(nav, tx.arrive_s)
            return sent(nav_request)

        while step != DONE:
            while t >= next_report_s:
                _, n_tokens, duration = heapq.heappop(reports)
                next_report_s = reports[0][0] if reports else math.inf
                uploaded(n_tokens, duration)
            if nav is not None:
                eta = nav.eta
                if step == DRAFT and (eta is None or eta > t):  # draft on while pending
                    if eta is None and t >= nav.lower_bound:
                        if t > env.now:
                            yield env.timeout(t - env.now)
                        if nav.eta is None:
                            bound = t + nav.service_s * soonest + min_down
                            if bound > t:
                                nav.lower_bound = bound
                            else:  # the answer's delay is below the clock's resolution at t
                                step = ANSWER  # wait for it (drafting on would never sync)
                        continue
                else:
                    if eta is None:
                        nav.arrived = env.event()
                        yield nav.arrived
                    elif eta > t:
                        t = eta
                    if alone:  # as the timeout below would move SimPy's clock
                        if t > now:
                            now += t - now
                    elif t > env.now:
                        yield env.timeout(t - env.now)
                    t = now if alone else env.now
                    # -- the answer is processed at local time t ----------------------------
                    if ack_bytes:
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
                    if policy.tuner_steps != tuned:  # its tuner ran: the edge computes first
                        tune_s = (policy.tuner_steps - tuned) * tuner_step_s
                        tuned = policy.tuner_steps
                        if speed is not None:
                            tune_s = speed.scale(t, tune_s)
                            speed_next_s = speed.next_s
                        if timeline is not None:
                            tuner = Span("draft", t, t + tune_s, "tuner", index, start, end)
                            timeline.append(tuner._replace(edge=cfg.edge))
                        t += tune_s
                        record.edge_busy_s += tune_s
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
            if t >= speed_next_s:  # a compute trace or thermal model only (else +inf)
                dt = speed.scale(t, dt)  # type: ignore[union-attr]
                speed_next_s = speed.next_s  # type: ignore[union-attr]
            if timeline is not None:
                timeline.append(
                    Span("draft", t, t + dt, "draft", index, position, position + 1, edge=cfg.edge)
                )
            t += dt
            step = drafted(conf, dt)
            if step and step != ANSWER:  # SEND or VERIFY
                step = send(t, step == VERIFY)

        if alone:
            self._now = now
            self._wait_until(t)
        elif t > env.now:
            yield env.timeout(t - env.now)
        core.finish(t)
        self.finish(record)
