"""The real-time edge executor: a llama.cpp draft model, a policy, and the cloud server.

`run_edge` drives the very same policy objects as the simulator (policies/base.py) through the
same bookkeeping core (policies/session.py, as `simulator/edge.py` does), but on a real clock
(`time.perf_counter`, reported to the policy as numbers only) against a real verification
server (realrun/cloud/server.py through `CloudClient`).

Threads. The main thread drafts, one token at a time (greedy: argmax of the draft's logits,
confidence = its softmax probability; or sampling, below). Uploads and verifications are sent
by a few uplink threads (`_Worker`), so drafting goes on while they are in flight, and an
upload need not wait for a pending NAV's answer. Every message but the open carries an order
number (`seq`) and the server applies them in that order (realrun.cloud.ordering), whatever
connection brought them. The main thread looks at what the uplink finished only between draft
tokens (never mid-token): upload reports become `policy.on_upload`, an answer is processed at
that token boundary (`VerifyOutcome.now_s` = the run's clock then), exactly as the simulator
processes answers.

Bookkeeping (the core's; positions count generated tokens): `committed` tokens are final,
`drafted_end` tokens exist (committed + speculative), `sent_end` have been handed to the
uplink. At most one NAV is outstanding; a VERIFY while one is pending sets `deferred` and the
edge waits for the answer. A NAV verifies every token since `committed`, and is ONE HTTP
request: `verify` carrying the tokens not uploaded yet (if any). The executor keeps the token
ids (and their confidences and distributions) in step with the core's positions.

Proactive uploads. Tokens the edge drafts while a NAV is pending start with the edge's guess
of the answer's token, and are worthless unless the NAV is wholly accepted and the guess is
right. They are uploaded at once, overlapping the NAV as in the simulator, as *conditional*
uploads (`at` = output position, `after` = the NAV's number): the server keeps them only if
that NAV accepted all its tokens and the guess matches its answer (synthetic mode: the
stream accepts the guess's position), skipping the guess (it holds the answer there) and
appending the rest; otherwise the upload is stale and dropped, and so are later ones behind
the same NAV. The main thread applies the same rule when it processes the answer, so both
sides agree on what the server holds. As in the simulator, a stale upload still costs its
bytes and is reported to `on_upload`.

Differences from the simulator:
- a NAV's upload and its verification are one HTTP request, so its `on_upload` report comes
  with the answer and its duration is the request's round trip minus the server's target and
  queueing time (the simulator reports the uplink transmission alone, when it ends); an
  upload's report is its round trip minus the server's queueing time;
- concurrent messages share the link as TCP connections do (the simulator's uplink sends them
  one after the other); so an upload's duration is reported to `on_upload` only when no other
  message was in flight at any time during it (the simulator reports those that did not
  queue behind an earlier one), keeping PipeSD's α, β fits free of waiting.

Synthetic acceptance (`acceptance_stream`, the simulator's `AcceptanceStream` of the same
seed, edge and request). The session is opened with the stream's accepted flags; the server
accepts a NAV's leading drafts whose positions are accepted (still running the real target
pass, for its timing) and answers the target's token at the first rejected position (or the
bonus). The real draft still runs every step and its tokens are uploaded, but the policy is
told the stream's confidence for on-path positions and the off-path confidences past a
rejected position, exactly as the simulator does, and a proactive guess of the bonus token
matches when the stream accepts its position. A matched guess stays in the edge's output (the
server holds its own token there; only positions matter in this mode), so the output is not
the target's and the draft's cache stays valid. The edge checks that every answer accepts what
the stream says.

Sampling (`sampling=EdgeSampling(temperature, top_k, seed)`; greedy without it; not with
synthetic acceptance). The session is opened with `sampling = {temperature, seed}`: the server
verifies by speculative rejection sampling (realrun.cloud.verifier) with its own Generator, seeded
by `EdgeSampling.server_seed(request)`. The draft samples: q = softmax(logits / T) restricted
to its top-K entries and renormalised (`top_k_distribution`; K >= the vocabulary: all of it),
d ~ q, and every uploaded token (uploads and NAVs alike) carries q as its `dists` entry (and
no `probs`: q holds q(d)). q is exactly the distribution d was drawn from, which is what makes
the output distributed as the target's own sampling at T (top-K at the edge costs acceptance,
not exactness). The draws come one after the other from a Generator seeded by (seed, request)
(`EdgeSampling.rng`), so each is independent of everything before it, and a run is
reproducible for policies whose decisions do not depend on timing (how many tokens a policy
drafts while a NAV is pending does; the server's Generator is consumed per verified draft).
The policy's confidence is max q, the top-1 probability of the distribution drawn from (the
greedy confidence when T = 1 and K = V; llama.cpp's p_min rule), not q(d): it depends on the
context only, never on the draw, so no decision to verify a draft or not can depend on the
token drawn. With q(d), PMin's VERIFY_DROP_LAST (the token just drafted is dropped when its
confidence is low) would send only draws with q(d) >= p_min while uploading q, and the output
would no longer be the target's distribution. The server's answer token (a resampled
correction or a sampled bonus) replaces or extends the draft as in greedy mode. A proactive
guess of the bonus token is the edge's own sample at that position; the server keeps the
conditional upload only if its sampled bonus has the same id (its matcher compares ids), the
edge's own rule too. Keeping the tokens drafted after a matching guess is still exact: they
were drawn from q given the guess, which is the server's token, with draws independent of
the server's. A NAV's top-K distributions must fit one request body (the server's
`Limits.max_body_bytes`: `max_sampling_top_k`; ValueError otherwise).

Edge-side verification (PicoSpec; `EdgeSampling.downlink_top_k` = K > 0). The session is
opened with `sampling.top_k` = K: uploads carry token ids only (q stays at the edge), and each
NAV's answer is the target's top-K rows instead of a decision. The main thread decides when it
processes the answer (realrun.edge.topk_verify.decide_topk, the simulator's `verify_topk`, with
draws from `EdgeSampling.verify_rng`) and the decision (accepted, token) rides as `outcome` on
the next upload or NAV. Uploads drafted while a NAV is pending are held until its outcome is
known (the server could not judge them before it) and then sent in order, the first carrying
the outcome. The output is the target's top-K-truncated sampling at T. The testbed selects
it from a policy's payload (realrun.testbed.edge_top_k).

Cloud lost (offline fallback). A transport error (connection refused or reset, a timeout: the
client's `timeout`), an HTTP 5xx, or a 404 (the session vanished: the server restarted) ends
the cloud's part of the request. The edge keeps everything committed and its speculative
tokens, and finishes with the draft alone, one token at a time, drafting as before: greedily,
or (sampling) drawing from its top-K q, so the tokens past the cloud's part are the draft's
own samples, not the target's distribution. Keeping the speculative tokens is the same as
drafting them again: they are the draft's own greedy tokens (or its own draws from q) after
the committed prefix (a matched bonus guess equals the target's token, or, in synthetic mode,
stays in the output anyway). `RequestRecord.local_tokens` counts the output tokens the
cloud never verified (kept speculative + drafted after the loss); an `offline` span covers the
local part. Local tokens count as `drafted` and as edge time, but are not shown to the policy.
The next `run_edge` opens a new session, so it uses the cloud again when it is back. Other
failures (4xx, malformed answers, protocol mismatches) are bugs and raise.

Accounting. `uplink_messages` counts HTTP requests sent (open, uploads, NAVs; not close),
`uplink_bytes` the lengths of their msgpack bodies, `downlink_bytes` the lengths of the
re-encoded msgpack answers (HTTP headers are not counted). `edge_busy_s` is the draft model's
time (prompt prefill + every draft step), `cloud_busy_s` the server's reported target time.
Energies stay 0 (no meters here).

Not supported (ValueError): cloud-only and split policies, and oracles (they need the true
link and cloud costs, not only the future acceptance run).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from policies.base import Mode, Policy
from policies.session import ANSWER, DONE, SEND, VERIFY, SpeculativeSession
from realrun.cloud.verifier import SparseDist
from realrun.edge.client import CloudClient, CloudError
from realrun.edge.drafts import (
    Draft,
    EdgeSampling,
    FullRowDraft,
    GreedyDraft,
    SamplingDraft,
    max_sampling_top_k,
    top_k_distribution,
)
from realrun.edge.topk_verify import decide_topk, rows_of
from realrun.protocol import ROW_DTYPES, encode, encode_rows
from simulator.acceptance import AcceptanceStream
from simulator.records import RequestRecord, Span

_UNSUPPORTED = "realrun edge supports speculative policies only for now"

Clock = Callable[[], float]


def cloud_lost(exc: BaseException) -> bool:
    """Whether a failed cloud request means the cloud is gone (finish the request locally)
    rather than a bug: transport errors and timeouts, HTTP 5xx, 404 (session lost)."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, CloudError) and (exc.status >= 500 or exc.status == 404)


class _CloudLost(Exception):
    """Raised in the main thread when the worker reports the cloud lost."""


# --------------------------------------------------------------------------------------------
# The uplink worker
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
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


class _Worker:
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
        self.jobs: queue.Queue[_Job] = queue.Queue()
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

    def put(self, job: _Job) -> None:
        """Queue a job (from the main thread only: the order of calls is the server's)."""
        if job.kind not in ("open", "stop"):
            job.seq = self.next_seq
            self.next_seq += 1
        self.jobs.put(job)

    def stop(self, timeout_s: float) -> None:
        """Let every lane finish its queued work, then end them."""
        for _ in self.threads:
            self.jobs.put(_Job("stop"))
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

    def _span(self, lane: str, start: float, end: float, label: str, job: _Job) -> None:
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

    def _upload(self, job: _Job) -> None:
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

    def _verify(self, job: _Job) -> None:
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

    def _do(self, job: _Job) -> None:
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


# --------------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------------


def run_edge(
    policy: Policy,
    draft_llama: Any,
    cloud: CloudClient,
    prompt_tokens: Sequence[int],
    max_new_tokens: int,
    request_index: int = 0,
    max_draft_tokens: int = 32,
    clock_origin: float | None = None,
    acceptance_stream: AcceptanceStream | None = None,
    sampling: EdgeSampling | None = None,
    full_rows: int | None = None,
) -> tuple[RequestRecord, list[int], list[Span]]:
    """One request under a speculative `policy`: (record, output tokens, timeline).

    `draft_llama`: a llama_cpp.Llama (logits_all=False is enough; its cache is reused when the
    prompt shares a prefix with what it holds). `max_draft_tokens`: safety cap per NAV (keep
    it at most the server's max_upload). Times are seconds since `clock_origin` (a
    `time.perf_counter()` value; default: the call's start). `acceptance_stream`: synthetic
    acceptance (module docstring), at least `max_new_tokens` positions long. `sampling`:
    speculative sampling (module docstring; None: greedy); not with `acceptance_stream`, and
    its top-K distributions of `max_draft_tokens` tokens must fit one request body
    (`max_sampling_top_k`). The output is the committed tokens, `max_new_tokens` of them (no
    stop at end-of-generation tokens); when the cloud is lost the draft finishes them alone
    (module docstring). `full_rows`: greedy drafting whose uploads carry each token's whole
    draft distribution in `full_rows` bytes per probability (2, 4 or 8; PipeSD's payload:
    `FullRowDraft`); not with `sampling`.
    """
    if full_rows is not None and (sampling is not None or full_rows not in ROW_DTYPES):
        raise ValueError(f"run_edge: full_rows must be one of {sorted(ROW_DTYPES)}, greedy only")
    if policy.mode != Mode.SPECULATIVE:
        raise ValueError(_UNSUPPORTED)
    if policy.is_oracle:
        raise ValueError("realrun edge cannot run oracle policies (they need the true costs)")
    n_new = int(max_new_tokens)
    if n_new < 1:
        raise ValueError("run_edge: max_new_tokens must be >= 1")
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise ValueError("run_edge: empty prompt")
    if max_draft_tokens < 1:
        raise ValueError("run_edge: max_draft_tokens must be >= 1")
    stream = acceptance_stream
    if stream is not None and (len(stream.accepted) < n_new or len(stream.next_reject) < n_new):
        raise ValueError(f"run_edge: the acceptance stream covers fewer than {n_new} positions")
    if sampling is not None:
        if stream is not None:
            raise ValueError("run_edge: sampling and synthetic acceptance cannot be combined")
        fits = max_sampling_top_k(max_draft_tokens)
        uploads_q = not sampling.downlink_top_k  # edge-side verification uploads ids only
        if uploads_q and min(sampling.top_k, int(draft_llama.n_vocab())) > fits:
            raise ValueError(
                f"run_edge: top-{sampling.top_k} distributions of {max_draft_tokens} tokens may "
                f"exceed the server's body limit (at most top-{fits})"
            )

    origin = time.perf_counter() if clock_origin is None else clock_origin

    def clock() -> float:
        return time.perf_counter() - origin

    prompt_len = len(prompt)
    record = RequestRecord(request=request_index, prompt_len=prompt_len, start_s=clock())
    timeline: list[Span] = []
    draft: Draft = (
        SamplingDraft(draft_llama, sampling, request_index)
        if sampling is not None
        else FullRowDraft(draft_llama, full_rows)
        if full_rows is not None
        else GreedyDraft(draft_llama)
    )
    worker = _Worker(cloud, prompt, clock, request_index, stream, sampling)
    worker.start()
    worker.put(_Job("open", ready_s=record.start_s))
    try:
        t = clock()
        draft.prefill(prompt)
        dt = clock() - t
        record.edge_busy_s += dt
        timeline.append(Span("draft", t, t + dt, "prefill", request_index, 0, 0))
        core = SpeculativeSession(policy, max_draft_tokens)
        judge = None
        if sampling is not None and sampling.downlink_top_k:
            judge = sampling.verify_rng(request_index)
        output = _loop(core, draft, worker, record, timeline, prompt, n_new, clock, stream, judge)
        worker.put(_Job("close"))
    finally:
        worker.stop(timeout_s=60)
    while not worker.events.empty():
        event = worker.events.get_nowait()
        if event[0] == "error":
            raise event[1]
    record.uplink_messages = worker.messages
    record.uplink_bytes = worker.up_bytes
    record.downlink_bytes = worker.down_bytes
    timeline.extend(worker.spans)
    timeline.sort(key=lambda s: (s.start_s, s.end_s))
    return record, output, timeline


def _finish_locally(
    draft: Draft,
    prompt: list[int],
    toks: list[int],
    n_new: int,
    record: RequestRecord,
    timeline: list[Span],
    clock: Clock,
) -> float:
    """The draft's own decoding (greedy, or sampling as `draft` drafts) until `toks` holds
    `n_new` tokens; returns when the first new token was ready (-1 if none was needed)."""
    first = -1.0
    while len(toks) < n_new:
        position = len(toks)
        t = clock()
        token, _, _ = draft.step(prompt + toks)
        dt = clock() - t
        timeline.append(Span("draft", t, t + dt, "local", record.request, position, position + 1))
        record.edge_busy_s += dt
        record.drafted += 1
        toks.append(token)
        if first < 0:
            first = t + dt
    return first


def _loop(
    core: SpeculativeSession,
    draft: Draft,
    worker: _Worker,
    record: RequestRecord,
    timeline: list[Span],
    prompt: list[int],
    n_new: int,
    clock: Clock,
    stream: AcceptanceStream | None,
    judge: np.random.Generator | None = None,
) -> list[int]:
    """The request's tokens, drafting and talking to the cloud as `core` says (the same
    bookkeeping as the simulator's edge); `core.begin` has been called. `judge`: the edge
    verifies (top-K answers, module docstring) with these draws; None: the server does."""
    index = record.request
    toks: list[int] = []  # committed + speculative tokens; len(toks) == core.drafted_end
    confs: list[float] = []
    dists: list[SparseDist | None] = []  # sampling: what each speculative token was drawn from
    sampling = isinstance(draft, SamplingDraft)
    nav: int | None = None  # the pending NAV's number
    nav_count = 0
    answer: tuple[Any, ...] | None = None
    off_index = 0
    held: list[_Job] = []  # edge-side verification: proactive uploads wait for the outcome
    outcome: tuple[int, int] | None = None  # decided, not yet sent
    lost: list[BaseException] = []  # the worker's report that the cloud is gone
    step = core.begin(record, len(prompt), n_new, record.start_s)

    def handle(event: tuple[Any, ...]) -> None:
        nonlocal answer
        kind = event[0]
        if kind == "error":
            raise event[1]
        if kind == "offline":  # acted on once no answer is left to process
            lost.append(event[1])
        if kind == "upload":
            core.uploaded(event[1], event[2])
        elif kind == "answer":
            if nav is None or event[1] != nav:
                raise RuntimeError("run_edge: an answer for no pending NAV")
            answer = event

    def drain() -> None:
        while True:
            try:
                event = worker.events.get_nowait()
            except queue.Empty:
                return
            handle(event)

    def send(nav_request: bool) -> int:
        """Queue [sent_end, drafted_end) as a NAV or an upload; returns the next step."""
        nonlocal nav, nav_count, outcome
        base, sent_end, drafted_end = len(prompt), core.sent_end, core.drafted_end
        job = _Job(
            "verify" if nav_request else "upload",
            tokens=[(base + i, toks[i]) for i in range(sent_end, drafted_end)],
            after_nav=nav,
            ready_s=clock(),
        )
        if judge is not None:  # edge-side verification: ids only, q stays here
            job.outcome, outcome = outcome, None
        elif sampling:  # the dists carry q(d); no `probs` (the simulator's topk/full payloads)
            job.dists = [d for d in dists[sent_end:drafted_end] if d is not None]
            if len(job.dists) != len(job.tokens):
                raise RuntimeError("run_edge: a speculative token without its distribution")
        else:
            job.probs = [min(max(c, 0.0), 1.0) for c in confs[sent_end:drafted_end]]
        if isinstance(draft, FullRowDraft) and job.tokens:  # PipeSD: every token's whole row
            rows = [d.probs for d in dists[sent_end:drafted_end] if d is not None]
            if len(rows) != len(job.tokens):
                raise RuntimeError("run_edge: a speculative token without its full row")
            job.rows = (np.stack(rows), draft.row_bytes)
        if nav_request:
            nav_count += 1
            nav = job.nav = nav_count
            job.m, job.first = drafted_end - core.committed, core.committed
        if judge is not None and nav is not None and not nav_request:
            held.append(job)  # the server cannot judge it before the NAV's outcome
        else:
            worker.put(job)
        return core.sent(nav_request)

    try:
        while step != DONE:
            drain()
            if lost and answer is None:
                raise _CloudLost(lost[0])
            if nav is not None:
                if step == ANSWER or answer is not None:
                    while answer is None:
                        if lost:
                            raise _CloudLost(lost[0])
                        handle(worker.events.get())
                    drain()  # upload reports that came with it
                    # -- the answer is processed now, at a token boundary ---------------------
                    t = clock()
                    _, _, accepted, token, target_s, arrived = answer
                    answer = None
                    start, end = core.nav_start, core.nav_end
                    m = end - start
                    if accepted is None:  # top-K rows: the edge decides (realrun.edge.topk_verify)
                        assert judge is not None
                        mine = [d for d in dists[start:end] if d is not None]
                        accepted, token = decide_topk(token, toks[start:end], mine, judge)
                        outcome = (accepted, token)
                        if held:  # the first held upload carries it; the rest follow in order
                            held[0].outcome, outcome = outcome, None
                            for job in held:
                                worker.put(job)
                            held.clear()
                    if stream is not None:
                        expected = min(stream.next_reject[start] - start, m)
                        if accepted != expected:
                            raise RuntimeError(
                                f"run_edge: the server accepted {accepted} of {m} at position "
                                f"{start}, the acceptance stream {expected}"
                            )
                    guessed = core.drafted_end > end and (
                        stream.next_reject[start] > end
                        if stream is not None
                        else toks[end] == token
                    )
                    nav = None
                    tuned = core.policy.tuner_steps
                    step = core.answered(accepted, guessed, t)
                    if core.policy.tuner_steps != tuned:  # the policy's tuner ran on this CPU
                        tuned_at = clock()  # the answer's bookkeeping and the BO step(s)
                        record.edge_busy_s += tuned_at - t
                        timeline.append(Span("draft", t, tuned_at, "tuner", index, start, end))
                    if not core.surviving:  # rolled back: the answer's token ends the output
                        del toks[start + accepted :]
                        del confs[start + accepted :]
                        del dists[start + accepted :]
                        toks.append(token)
                        confs.append(1.0)
                        dists.append(None)  # the server's token: committed, never uploaded
                    record.cloud_busy_s += target_s
                    timeline.append(
                        Span("result", arrived, t, f"{accepted}/{m} accepted", index, start, end)
                    )
                    if step in (SEND, VERIFY):
                        step = send(step == VERIFY)
                    continue
            elif step == VERIFY:
                step = send(True)
                continue
            # -- draft one token --------------------------------------------------------------
            position = core.drafted_end
            t = clock()
            token, conf, dist = draft.step(prompt + toks)
            dt = clock() - t
            if stream is not None:  # the simulator's confidences (simulator/edge.py)
                if position <= stream.next_reject[core.committed]:
                    conf = stream.confidence[position]
                else:
                    off_path = stream.off_path_confidence
                    conf = off_path[off_index % len(off_path)]
                    off_index += 1
            timeline.append(Span("draft", t, t + dt, "draft", index, position, position + 1))
            toks.append(token)
            confs.append(conf)
            dists.append(dist)
            step = core.drafted(conf, dt)
            if core.drafted_end < len(toks):  # VERIFY_DROP_LAST: the token is discarded
                toks.pop()
                confs.pop()
                dists.pop()
            if step in (SEND, VERIFY):
                step = send(step == VERIFY)
    except _CloudLost as lost_cloud:
        t = clock()
        record.local_tokens = n_new - core.committed
        if core.first_token_s < 0 and core.drafted_end > core.committed:
            core.first_token_s = t
        first_local = _finish_locally(draft, prompt, toks, n_new, record, timeline, clock)
        if core.first_token_s < 0:
            core.first_token_s = first_local
        reason = str(lost_cloud.args[0]).splitlines()[0] if str(lost_cloud.args[0]) else ""
        label = f"local: {type(lost_cloud.args[0]).__name__} {reason}".strip()
        timeline.append(Span("offline", t, clock(), label, index, core.committed, n_new))

    core.finish(clock())
    return toks[:n_new]


def startup_probes(policy: Policy, cloud: CloudClient, bytes_per_token: int = 5) -> int:
    """PipeSD-style start-up probes, once per edge session: padded `/v1/probe` messages of
    `policy.startup_probe_sizes()` token sizes, timed and reported to `on_upload`. Returns the
    number of probes answered: probing stops when the cloud is lost (`cloud_lost`)."""
    sent = 0
    for size in policy.startup_probe_sizes():
        start = time.perf_counter()
        try:
            cloud._post("probe", {"pad": b"\0" * (bytes_per_token * int(size))})
        except Exception as exc:
            if cloud_lost(exc):
                break
            raise
        policy.on_upload(int(size), time.perf_counter() - start)
        sent += 1
    return sent


__all__ = [
    "EdgeSampling",
    "GreedyDraft",
    "SamplingDraft",
    "cloud_lost",
    "max_sampling_top_k",
    "run_edge",
    "startup_probes",
    "top_k_distribution",
]
