"""The model-side work of each route: open, upload, verify, close, health.

Each handler takes the server's shared state (`Cloud`) and an already parsed request
(realrun.protocol), runs in a worker thread (it may wait for the model lock or a batch) and
returns the answer's fields. Admission, ordering and body reading happen before, in the
event loop (realrun.cloud.endpoints). The target is reached only through
realrun.cloud.backend.TargetBackend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from policies.batching import BatchRule
from realrun import protocol
from realrun.cloud.backend import Session, TargetBackend
from realrun.cloud.batching import Batcher, PlanBatching, PlanSeat
from realrun.cloud.guards import ByteBudget, ClientCounter, RateLimiter
from realrun.cloud.ordering import Sequencer, follow_up
from realrun.cloud.sessions import SessionTable
from realrun.cloud.settings import ServerSettings
from realrun.cloud.verifier import Rule, Sampling, Synthetic, TopK
from realrun.protocol import Drafts, Limits, ProtocolError


class EnergyMeter(Protocol):
    """A cumulative energy counter (e.g. NVML's): joules since some fixed moment."""

    def read_j(self) -> float: ...


@dataclass(frozen=True)
class VerifyRequest:
    """One parsed `verify`, waiting for a batch."""

    sid: str
    n: int
    drafts: Drafts | None
    outcome: tuple[int, int] | None = None
    """The edge's (accepted, token) for the session's previous top-K verify (TopK rule)."""


@dataclass
class Cloud:
    """Everything the handlers share: the target, its lock, the books and the bounds."""

    target: TargetBackend
    settings: ServerSettings
    limits: Limits
    meter: EnergyMeter | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held for every call into the target (backends are not thread-safe)."""
    table: SessionTable = field(init=False)
    sequencer: Sequencer = field(init=False)
    batcher: Batcher[VerifyRequest, dict[str, Any]] = field(init=False)
    plans: PlanBatching[VerifyRequest, dict[str, Any]] = field(init=False)
    """Verifies of sessions seated in a DiP-SD plan, batched by its turns."""
    limiter: RateLimiter | None = field(init=False)
    inflight: ClientCounter = field(init=False)
    budget: ByteBudget = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.table = SessionTable(
            s.max_sessions, s.max_sessions_per_client, s.session_idle_timeout_s
        )
        self.sequencer = Sequencer(s.order_timeout_s, max_parked=s.max_parked_per_session)
        max_batch = min(s.max_batch, self.target.max_verify_batch)
        window_s = s.batch_window_ms / 1e3
        rule = BatchRule(max_batch, window_s)
        self.batcher = Batcher(lambda batch: run_batch(self, batch), rule, self.lock)
        self.plans = PlanBatching(lambda batch: run_batch(self, batch), self.lock)
        self.limiter = RateLimiter(s.rate_limit_per_s) if s.rate_limit_per_s else None
        self.inflight = ClientCounter(s.max_inflight_per_client)
        self.budget = ByteBudget(s.max_buffered_bytes, s.max_buffered_bytes // 2)


# ------------------------------------------------------------------------------ open, close


def open_session(
    cloud: Cloud, prompt: list[int], rule: Rule | None, client: str, seat: PlanSeat | None = None
) -> dict[str, Any]:
    """Open a session for `client` (429 past its or the global session limit), seated in a
    DiP-SD plan if `seat` (409 if another plan is in progress)."""
    if rule is not None and not cloud.target.supports_rules:
        raise ProtocolError(422, "this server's backend verifies greedily only")
    with cloud.table.reserve(client), cloud.lock:
        if rule is None:
            sid, ms = cloud.target.open(prompt)
        else:
            sid, ms = cloud.target.open(prompt, rule)
        cloud.table.add(sid, client)
    if seat is not None:
        try:
            cloud.plans.join(sid, seat)
        except ValueError as exc:
            close_session(cloud, sid)
            raise ProtocolError(409, str(exc)) from None
    return {"session": sid, "n_prompt": len(prompt), "prefill_ms": ms}


def close_session(cloud: Cloud, sid: str) -> dict[str, Any]:
    """Close a session (404 if unknown)."""
    with cloud.lock:
        session_of(cloud, sid)
        cloud.target.drop(sid)
        cloud.table.remove(sid)
    cloud.plans.leave(sid)
    return {"closed": True}


def drop_sessions(cloud: Cloud, sids: list[str]) -> None:
    """Drop sessions from the target (expired ones: the table has forgotten them already)."""
    with cloud.lock:
        for sid in sids:
            if sid in cloud.target.sessions:
                cloud.target.drop(sid)
    for sid in sids:
        cloud.plans.leave(sid, retire=True)  # an edge gone silent: its batch stops waiting


def health(cloud: Cloud) -> dict[str, Any]:
    """What /v1/health says: the model, its sizes, the load, and every limit and timeout."""
    return {
        "ok": True,
        "model": cloud.target.model_name,
        "n_vocab": cloud.target.n_vocab,
        "n_ctx": cloud.target.n_ctx,
        "sessions": len(cloud.target.sessions),
        "max_batch": cloud.batcher.max_batch,
        "settings": cloud.settings.describe(),
        "expired_sessions": cloud.table.expired_total,
    }


# ------------------------------------------------------------------------------ upload


def session_of(cloud: Cloud, sid: str) -> Session:
    """The target's session `sid`; 404 if it has none."""
    session = cloud.target.sessions.get(sid)
    if session is None:
        raise ProtocolError(404, "unknown session (closed, expired or never opened)")
    return session


def check_drafts(cloud: Cloud, session: Session, drafts: Drafts, total: int) -> None:
    """Refuse drafts that do not fit the session (its rule, its limits)."""
    sampling = isinstance(session.rule, Sampling)
    if drafts.dists is not None and not sampling:
        raise ProtocolError(422, "'dists' needs a session opened with 'sampling'")
    if sampling and drafts.tokens and drafts.dists is None:
        raise ProtocolError(422, "a 'sampling' session needs 'dists' for every token")
    if total > cloud.limits.max_upload:
        raise ProtocolError(
            422, f"more than {cloud.limits.max_upload} tokens uploaded before a verify"
        )
    if session.length + total > cloud.limits.max_session_len:
        raise ProtocolError(422, "session would exceed the target's context size")


def settle(cloud: Cloud, sid: str, session: Session, outcome: tuple[int, int] | None) -> None:
    """Apply the edge's decision on a TopK session's previous verify (PicoSpec's edge-side
    verification): that verify kept every draft and a placeholder pending token; keep the
    `accepted` leading drafts and make the edge's `token` (which must be in the top-K it was
    sent at that position) the pending one. The backends roll their KV cache back to the
    committed tokens before their next forward. 422 if an outcome is due and missing, not
    due and sent, or out of range."""
    rule = session.rule
    due = isinstance(rule, TopK) and rule.awaiting is not None
    if outcome is None:
        if due:
            raise ProtocolError(422, "'outcome' of the session's previous top-K verify missing")
        return
    if not due:
        raise ProtocolError(422, "'outcome' sent but no top-K verify awaits one")
    assert isinstance(rule, TopK) and rule.awaiting is not None
    accepted, token = outcome
    if accepted > rule.awaiting:
        raise ProtocolError(
            422, f"'outcome' accepts {accepted} drafts of the {rule.awaiting} verified"
        )
    if token not in rule.rows[accepted][0]:
        raise ProtocolError(422, "'outcome' token is not in the top-K sent at its position")
    del session.committed[len(session.committed) - (rule.awaiting - accepted) :]
    session.pending = token
    cloud.table.chain(sid).whole = accepted == rule.awaiting
    rule.awaiting, rule.rows = None, []


def store(cloud: Cloud, sid: str, drafts: Drafts) -> int:
    """Append drafts to the target's session."""
    if drafts.dists is None:
        return cloud.target.upload(sid, drafts.tokens, drafts.probs)
    return cloud.target.upload(sid, drafts.tokens, drafts.probs, drafts.dists)


def matcher(session: Session) -> Callable[[int, int], bool]:
    """Whether an edge's guess at the pending token's position counts as that token."""
    rule = session.rule
    if isinstance(rule, Synthetic):
        return lambda pos, _tok: pos < len(rule.verdicts) and rule.verdicts[pos]
    return lambda _pos, tok: tok == session.pending


def trimmed(cloud: Cloud, session: Session, upload: protocol.Upload) -> Drafts | None:
    """The drafts of `upload` to append (a conditional one loses its held prefix); None if
    it is stale (realrun.cloud.ordering.follow_up)."""
    drafts = upload.drafts
    if upload.after is None or upload.at is None:
        return drafts
    held = [session.pending, *session.uploaded]
    chain = cloud.table.chain(upload.sid)
    first = session.generated - 1
    plan = follow_up(chain, upload.after, upload.at, drafts.tokens, held, first, matcher(session))
    if plan is None:
        return None
    skip = plan[0]
    return Drafts(
        drafts.tokens[skip:],
        drafts.probs[skip:] if drafts.probs is not None else None,
        drafts.dists[skip:] if drafts.dists is not None else None,
    )


def apply_upload(
    cloud: Cloud,
    upload: protocol.Upload,
    start_s: float,
    outcome: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Append an upload's drafts (or none of a stale conditional one), after the `outcome` it
    carries (`settle`); `start_s`: when the request began waiting (perf_counter), for
    `queued_ms`."""
    with cloud.lock:
        session = session_of(cloud, upload.sid)
        settle(cloud, upload.sid, session, outcome)
        check_drafts(cloud, session, upload.drafts, len(session.uploaded))
        drafts = trimmed(cloud, session, upload)
        kept = len(drafts.tokens) if drafts is not None else 0
        if drafts is not None and kept:
            check_drafts(cloud, session, drafts, len(session.uploaded) + kept)
            store(cloud, upload.sid, drafts)
        return {
            "pending": len(session.uploaded),
            "kept": kept,
            "stale": drafts is None,
            "queued_ms": 1e3 * (time.perf_counter() - start_s),
        }


# ------------------------------------------------------------------------------ verify


def verify(cloud: Cloud, request: VerifyRequest, start_s: float) -> dict[str, Any]:
    """Verify in the next batch that has room (blocks until answered); `start_s` as for
    apply_upload."""
    answer = cloud.plans.submit(request.sid, request)
    if answer is None:
        answer = cloud.batcher.submit(request.sid, request)
    waited_ms = 1e3 * (time.perf_counter() - start_s) - answer["target_ms"]
    return answer | {"queued_ms": max(waited_ms, 0.0)}


def admit(cloud: Cloud, request: VerifyRequest) -> None:
    """Check one verify against its session and store the tokens it carries."""
    session = session_of(cloud, request.sid)
    settle(cloud, request.sid, session, request.outcome)
    drafts = request.drafts or Drafts([], None, None)
    total = len(session.uploaded) + len(drafts.tokens)
    if request.n != total:
        raise ProtocolError(422, f"'n' is {request.n} but {total} tokens were uploaded")
    check_drafts(cloud, session, drafts, total)
    if drafts.tokens:
        store(cloud, request.sid, drafts)


def run_batch(cloud: Cloud, requests: list[VerifyRequest]) -> list[dict[str, Any] | BaseException]:
    """Verify a batch (the Batcher holds the model lock): one answer or error each."""
    answers: list[dict[str, Any] | BaseException] = []
    admitted = []
    for request in requests:
        try:
            admit(cloud, request)
            admitted.append(request.sid)
            answers.append({})
        except ProtocolError as exc:
            answers.append(exc)
    if not admitted:
        return answers
    meter = cloud.meter
    before = meter.read_j() if meter is not None else None
    results = iter(cloud.target.verify_batch(admitted))
    energy = None if meter is None or before is None else (meter.read_j() - before) / len(admitted)
    for request, answer in zip(requests, answers, strict=True):
        if isinstance(answer, dict):
            result = next(results)
            cloud.table.chain(request.sid).verified(result.accepted, request.n)
            answer |= {
                "target_ms": result.target_ms,
                "energy_j": energy,
                "batch_size": result.batch_size,
            }
            rule = cloud.target.sessions[request.sid].rule
            if isinstance(rule, TopK):  # the edge decides (`settle` applies its outcome)
                answer["topk"] = [[ids.tolist(), probs.tolist()] for ids, probs in rule.rows]
            else:
                answer |= {"accepted": result.accepted, "token": result.token}
    return answers


__all__ = [
    "Cloud",
    "EnergyMeter",
    "VerifyRequest",
    "apply_upload",
    "close_session",
    "drop_sessions",
    "health",
    "open_session",
    "verify",
]
