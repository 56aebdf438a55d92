"""The real-time edge executor: a llama.cpp draft model, a policy, and the cloud server.

`run_edge` drives the very same policy objects as the simulator (policies/base.py) through the
same bookkeeping core (policies/session.py, as `simulator/edge.py` does), but on a real clock
(`time.perf_counter`, reported to the policy as numbers only) against a real verification
server (realrun/cloud/server.py through `CloudClient`).

Threads. The main thread drafts, one token at a time (greedy: argmax of the draft's logits,
confidence = its softmax probability; or sampling, below). Uploads and verifications are sent
by a few uplink threads (`UplinkWorker`), so drafting goes on while they are in flight, and an
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
it from a policy's payload (realrun.testbed_rules.edge_top_k).

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

Modules. This one holds `run_edge` (the arguments, the draft, the uplink, the record);
realrun/edge/request_loop.py the main thread's loop; realrun/edge/uplink.py the uplink threads;
realrun/edge/offline.py the cloud-lost test and the local finish; realrun/edge/drafts.py the
draft models; realrun/edge/topk_verify.py the edge-side decision; realrun/edge/startup_probes.py
PipeSD's start-up probes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from policies.base import Mode, Policy
from policies.session import SpeculativeSession
from realrun.edge.client import CloudClient
from realrun.edge.drafts import (
    Draft,
    EdgeSampling,
    FullRowDraft,
    GreedyDraft,
    SamplingDraft,
    max_sampling_top_k,
)
from realrun.edge.request_loop import run_request_loop
from realrun.edge.uplink import UplinkJob, UplinkWorker
from realrun.protocol import ROW_DTYPES
from simulator.acceptance import AcceptanceStream
from simulator.records import RequestRecord, Span

_UNSUPPORTED = "realrun edge supports speculative policies only for now"


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
    worker = UplinkWorker(cloud, prompt, clock, request_index, stream, sampling)
    worker.start()
    worker.put(UplinkJob("open", ready_s=record.start_s))
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
        output = run_request_loop(
            core, draft, worker, record, timeline, prompt, n_new, clock, stream, judge
        )
        worker.put(UplinkJob("close"))
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
