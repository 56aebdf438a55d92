"""The edge's per-request loop: draft, send and process answers as `SpeculativeSession` says.

The main thread's side of realrun/edge/executor.py: it drafts one token at a time, hands
uploads and NAVs to the uplink (realrun/edge/uplink.py), processes each answer at a token
boundary (the server's decision, or PicoSpec's top-K rows decided here by
realrun.edge.topk_verify) and, when the cloud is lost, finishes the request with the draft
alone (realrun/edge/offline.py). Kept apart from `run_edge` so the loop's bookkeeping reads
as one piece, as `simulator/edge.py`'s does.
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from policies.session import ANSWER, DONE, SEND, VERIFY, SpeculativeSession
from realrun.cloud.verifier import SparseDist
from realrun.edge.drafts import Draft, FullRowDraft, SamplingDraft
from realrun.edge.offline import CloudLost, finish_locally
from realrun.edge.topk_verify import decide_topk
from realrun.edge.uplink import Clock, UplinkJob, UplinkWorker
from simulator.acceptance import AcceptanceStream
from simulator.records import RequestRecord, Span


def run_request_loop(
    core: SpeculativeSession,
    draft: Draft,
    worker: UplinkWorker,
    record: RequestRecord,
    timeline: list[Span],
    prompt: list[int],
    n_new: int,
    clock: Clock,
    stream: AcceptanceStream | None,
    judge: np.random.Generator | None = None,
) -> list[int]:
    """The request's tokens, drafting and talking to the cloud as `core` says (the same
    bookkeeping as the simulator's edge; `core.begin` is called here). `judge`: the edge verifies
    (top-K answers, realrun/edge/executor.py) with these draws; None: the server does."""
    index = record.request
    toks: list[int] = []  # committed + speculative tokens; len(toks) == core.drafted_end
    confs: list[float] = []
    dists: list[SparseDist | None] = []  # sampling: what each speculative token was drawn from
    sampling = isinstance(draft, SamplingDraft)
    nav: int | None = None  # the pending NAV's number
    nav_count = 0
    answer: tuple[Any, ...] | None = None
    off_index = 0
    held: list[UplinkJob] = []  # edge-side verification: proactive uploads wait for the outcome
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
        if kind == "upload":  # what the policy's upload fit hears, kept in the timeline
            core.uploaded(event[1], event[2])
            heard_s = clock()
            timeline.append(
                Span("report", heard_s - event[2], heard_s, "upload", index, 0, event[1])
            )
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
        job = UplinkJob(
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
                raise CloudLost(lost[0])
            if nav is not None:
                if step == ANSWER or answer is not None:
                    while answer is None:
                        if lost:
                            raise CloudLost(lost[0])
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
    except CloudLost as lost_cloud:
        t = clock()
        record.local_tokens = n_new - core.committed
        if core.first_token_s < 0 and core.drafted_end > core.committed:
            core.first_token_s = t
        first_local = finish_locally(draft, prompt, toks, n_new, record, timeline, clock)
        if core.first_token_s < 0:
            core.first_token_s = first_local
        reason = str(lost_cloud.args[0]).splitlines()[0] if str(lost_cloud.args[0]) else ""
        label = f"local: {type(lost_cloud.args[0]).__name__} {reason}".strip()
        timeline.append(Span("offline", t, clock(), label, index, core.committed, n_new))

    core.finish(clock())
    return toks[:n_new]
