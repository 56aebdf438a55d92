"""The edge's uplink: the request's cloud messages, sent on a few threads while the edge drafts.

Split from the request loop (realrun/edge/request_loop.py) so that drafting never waits on the
network: the main thread queues `UplinkJob`s, `UplinkWorker` sends them in order (`seq`), counts
their bytes, records their spans and reports uploads and answers back by a queue
(realrun/edge/executor.py, "Threads" and "Accounting").
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from realrun.cloud.verifier import SparseDist
from realrun.edge.client import CloudClient
from realrun.edge.drafts import EdgeSampling
from realrun.edge.offline import cloud_lost
from realrun.edge.topk_verify import rows_of
from realrun.protocol import encode, encode_rows
from simulator.acceptance import AcceptanceStream
from simulator.records import Span

Clock = Callable[[], float]
"""The run's clock: seconds since the request's origin."""


@dataclass
class UplinkJob:
    """One cloud message for the uplink, as the main thread queued it."""

    kind: str  # "open", "upload", "verify", "close", "stop"
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (absolute position, id)
    probs: list[float] | None = None  # greedy: the draft's probability of each token
    dists: list[SparseDist] | None = None  # sampling: the distribution each was drawn from
    rows: tuple[NDArray[np.float32], int] | None = None  # full rows, bytes per probability
    after_nav: int | None = None  # proactive: queued while this NAV was pending
    nav: int = 0
    m: int = 0
    first: int = 0  # a NAV's first output position
    ready_s: float = 0.0
    seq: int | None = None  # the server's order number (all but open and stop)
    outcome: tuple[int, int] | None = None  # edge-side verification: the last NAV's decision


class UplinkWorker:
    """Sends the request's cloud messages on `lanes` threads; reports by a queue.

    The open goes first; the others are numbered (`seq`) in the order they were queued and
    the server applies them in that order (realrun.cloud.ordering), so an upload queued while a NAV
    is in flight is sent at once, overlapping it, as the simulator's uplink does. The first
    failed request ends the work: ("offline", exc) when the cloud is lost, else ("error", exc);
    jobs not yet started are skipped.
    """

    def __init__(
        self,
        cloud: CloudClient,
        prompt: list[int],
        clock: Clock,
        request: int,
        stream: AcceptanceStream | None,
        sampling: EdgeSampling | None = None,
        lanes: int = 4,
    ) -> None:
        self.cloud, self.clock, self.request, self.stream = cloud, clock, request, stream
        self.sampling = sampling
        self.jobs: queue.Queue[UplinkJob] = queue.Queue()
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.prompt = prompt
        self.session: str | None = None
        self.opened = threading.Event()
        self.failed = threading.Event()
        self.lock = threading.Lock()
        self.next_seq = 0
        self.messages = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.spans: list[Span] = []
        self._in_flight: set[int] = set()
        self._shared: set[int] = set()
        """Messages (by seq) in flight, and those that overlapped another: their durations
        include the other's bytes, so they are not reported to `on_upload`."""
        self.threads = [
            threading.Thread(target=self._run, name=f"pipesd-edge-uplink-{i}", daemon=True)
            for i in range(lanes)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def put(self, job: UplinkJob) -> None:
        """Queue a job (from the main thread only: the order of calls is the server's)."""
        if job.kind not in ("open", "stop"):
            job.seq = self.next_seq
            self.next_seq += 1
        self.jobs.put(job)

    def stop(self, timeout_s: float) -> None:
        """Let every lane finish its queued work, then end them."""
        for _ in self.threads:
            self.jobs.put(UplinkJob("stop"))
        for thread in self.threads:
            thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job.kind == "stop":
                return
            if job.kind != "open":
                self.opened.wait()
            if self.failed.is_set():
                continue
            try:
                self._do(job)
            except BaseException as exc:  # handed to the main thread, once
                with self.lock:
                    if not self.failed.is_set():
                        self.failed.set()
                        self.events.put(("offline" if cloud_lost(exc) else "error", exc))
            finally:
                if job.kind == "open":
                    self.opened.set()

    def _count(self, body: dict[str, Any], answer: dict[str, Any]) -> None:
        with self.lock:
            self.messages += 1
            self.up_bytes += len(encode(body))
            self.down_bytes += len(encode(answer))

    def _span(self, lane: str, start: float, end: float, label: str, job: UplinkJob) -> None:
        first = job.tokens[0][0] - len(self.prompt) if job.tokens else 0
        last = first + len(job.tokens)
        with self.lock:
            self.spans.append(Span(lane, start, end, label, self.request, first, last, job.ready_s))

    def _open(self) -> None:
        body: dict[str, Any] = {"prompt": self.prompt}
        if self.stream is not None:
            verdicts = [int(a) for a in self.stream.accepted]
            body["synthetic"] = {"accepted": verdicts}
            answer = self.cloud.open(self.prompt, synthetic_accepted=verdicts)
        elif self.sampling is not None:
            rule = (float(self.sampling.temperature), self.sampling.server_seed(self.request))
            top_k = int(self.sampling.downlink_top_k)
            body["sampling"] = {"temperature": rule[0], "seed": rule[1]}
            body["sampling"] |= {"top_k": top_k} if top_k else {}
            answer = self.cloud.open(self.prompt, sampling=rule, top_k=top_k)
        else:
            answer = self.cloud.open(self.prompt)
        self._count(body, answer)
        self.session = str(answer["session"])

    def _upload(self, job: UplinkJob) -> None:
        """Upload a token batch; a proactive one is conditional on its NAV (the server drops
        it if the NAV's answer refutes it: the same rule as the main thread's)."""
        assert self.session is not None
        tokens = [tok for _, tok in job.tokens]
        dists = _wire(job.dists)
        body: dict[str, Any] = {"session": self.session, "tokens": tokens, "seq": job.seq}
        body |= _drafts_body(job.probs, dists, job.rows)
        condition: dict[str, int] = {}
        if job.after_nav is not None:
            condition = {"at": job.tokens[0][0] - len(self.prompt), "after": job.after_nav}
            body |= condition
        self._message_began(job.seq)
        start = self.clock()
        if job.outcome is not None:  # edge-side verification: the last NAV's decision
            body["outcome"] = list(job.outcome)
        answer = self.cloud.upload(
            self.session,
            tokens,
            job.probs,
            dists,
            seq=job.seq,
            rows=job.rows,
            outcome=job.outcome,
            **condition,
        )
        end = self.clock()
        alone = self._message_alone(job.seq)
        self._count(body, answer)
        self._span("uplink", start, end, "stale batch" if answer.get("stale") else "batch", job)
        queued_s = float(answer.get("queued_ms") or 0.0) / 1e3
        if alone:  # a clean sample: no other message shared the link meanwhile
            self.events.put(("upload", len(tokens), max(end - start - queued_s, 0.0)))

    def _message_began(self, seq: int) -> None:
        with self.lock:
            if self._in_flight:
                self._shared |= self._in_flight | {seq}
            self._in_flight.add(seq)

    def _message_alone(self, seq: int) -> bool:
        """The message has been answered: whether no other was in flight at any time during it."""
        with self.lock:
            self._in_flight.discard(seq)
            shared = seq in self._shared
            self._shared.discard(seq)
        return not shared

    def _verify(self, job: UplinkJob) -> None:
        """A NAV: the unsent tokens and the verification in one request."""
        assert self.session is not None
        tokens = [tok for _, tok in job.tokens]
        probs, dists = (job.probs, _wire(job.dists)) if tokens else (None, None)
        rows = job.rows if tokens else None
        body: dict[str, Any] = {"session": self.session, "n": job.m, "seq": job.seq}
        if tokens:
            body |= {"tokens": tokens, **_drafts_body(probs, dists, rows)}
        self._message_began(job.seq)
        start = self.clock()
        if job.outcome is not None:  # edge-side verification: the last NAV's decision
            body["outcome"] = list(job.outcome)
        answer = self.cloud.verify(
            self.session,
            job.m,
            tokens or None,
            probs,
            dists,
            seq=job.seq,
            rows=rows,
            outcome=job.outcome,
        )
        arrived = self.clock()
        alone = self._message_alone(job.seq)
        self._count(body, answer)
        accepted: int | None
        token: Any
        if "topk" in answer:  # the edge decides (main thread): the rows ride in `token`
            accepted, token = None, rows_of(answer)
            if len(token) != job.m + 1:
                raise RuntimeError(f"run_edge: {len(token)} top-K rows for {job.m} drafts")
        else:
            accepted, token = int(answer["accepted"]), int(answer["token"])
            if not 0 <= accepted <= job.m:
                raise RuntimeError(f"run_edge: the server accepted {accepted} of {job.m}")
        last = job.first + job.m
        nav_span = Span("cloud", start, arrived, "NAV", self.request, job.first, last, job.ready_s)
        with self.lock:
            self.spans.append(nav_span)
        target_s = float(answer.get("target_ms") or 0.0) / 1e3
        queued_s = float(answer.get("queued_ms") or 0.0) / 1e3
        if tokens and alone:
            link_s = max(arrived - start - target_s - queued_s, 0.0)
            self.events.put(("upload", len(tokens), link_s))
        self.events.put(("answer", job.nav, accepted, token, target_s, arrived))

    def _do(self, job: UplinkJob) -> None:
        if job.kind == "open":
            self._open()
        elif job.kind == "upload":
            self._upload(job)
        elif job.kind == "verify":
            self._verify(job)
        elif job.kind == "close":
            if self.session is not None:
                self.cloud.close(self.session, seq=job.seq)
        else:  # pragma: no cover - internal misuse
            raise RuntimeError(f"unknown job {job.kind!r}")


def _wire(dists: list[SparseDist] | None) -> list[tuple[list[int], list[float]]] | None:
    """Draft distributions as realrun.edge.client sends them: (ids, probs) lists."""
    if dists is None:
        return None
    return [(d.ids.tolist(), d.probs.tolist()) for d in dists]


def _drafts_body(
    probs: list[float] | None,
    dists: list[tuple[list[int], list[float]]] | None,
    rows: tuple[NDArray[np.float32], int] | None = None,
) -> dict[str, Any]:
    """The `probs` / `dists` / `rows` fields of a request body as the client sends them
    (counted)."""
    body: dict[str, Any] = {} if rows is None else encode_rows(*rows)
    if probs is not None:
        body["probs"] = probs
    if dists is not None:
        body["dists"] = [[ids, ps] for ids, ps in dists]
    return body
