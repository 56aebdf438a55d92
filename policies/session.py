"""The speculative request's state machine between a policy and an executor, written once.

Every executor (the SimPy edge, the testbed edge, the policy checker) drives a
`SpeculativeSession`: every method returns the next step (below), and the executor does it:
drafts a token and reports it with `drafted`, sends what it is told to and says so with
`sent`, and hands a NAV's answer to `answered`. The session applies the rules every executor
shares: the policy's decisions, the forced VERIFY at the draft cap and before the last token,
deferred verification while a NAV is pending, answer handling (rollback or surviving proactive
tokens), and the token counters of the request's record. It never reads a clock, sleeps or
does I/O: times arrive as numbers.

Positions count generated tokens. `committed` tokens are final, `drafted_end` exist (committed
+ speculative), `sent_end` have been handed to the uplink; committed <= sent_end <= drafted_end.
At most one NAV is outstanding: it verifies [`nav_start`, `nav_end`). A VERIFY while one is
pending sets `deferred`: the edge stops drafting and waits for the answer. Tokens drafted while
a NAV is pending (proactive drafting) start with the edge's guess of the answer's token; they
survive the answer only if it accepted the whole draft and the guess was right.

The per-token path (`drafted`) is a handful of attribute operations: the simulator calls it
for every drafted token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from policies.base import CostHints, Decision, Policy, RequestStart, VerifyOutcome

DRAFT, SEND, VERIFY, ANSWER, ROUND, DONE = range(6)
"""The steps, which every method of the session returns: what the executor does next.
DRAFT: draft one token and report it with `drafted` (with a NAV pending: unless its answer has
arrived, which the executor then processes first); SEND: upload the drafted, unsent tokens
[sent_end, drafted_end) and say so with `sent(False)`; VERIFY: send a NAV for [committed,
drafted_end) carrying the unsent tokens, then `sent(True)`; ANSWER: wait for the pending NAV's
answer and process it with `answered`; ROUND: an oracle's round starts (`round_start`); DONE:
the request has all its tokens (`finish`)."""

_CONTINUE, _SEND, _VERIFY, _DROP_LAST = (int(d) for d in Decision)
_new_tuple = tuple.__new__
"""Builds a NamedTuple from a tuple without its Python-level `__new__` (once per answer)."""


class TokenLedger(Protocol):
    """The request record's fields the session keeps (simulator.records.RequestRecord)."""

    new_tokens: int
    first_token_s: float
    end_s: float
    navs: int
    drafted: int
    verified: int
    accepted: int
    discarded: int
    promoted: int
    bonus_matches: int
    rollbacks: int
    edge_busy_s: float


@dataclass(slots=True)
class TokenCounts:
    """A `TokenLedger` of its own, for executors without a request record (the checker)."""

    new_tokens: int = 0
    first_token_s: float = 0.0
    end_s: float = 0.0
    navs: int = 0
    drafted: int = 0
    verified: int = 0
    accepted: int = 0
    discarded: int = 0
    promoted: int = 0
    bonus_matches: int = 0
    rollbacks: int = 0
    edge_busy_s: float = 0.0


class SpeculativeSession:
    """One edge's speculative requests under one policy; `begin` starts each request."""

    __slots__ = (
        "_on_draft",
        "committed",
        "deferred",
        "drafted_end",
        "drafts_while_pending",
        "first_token_s",
        "is_oracle",
        "limit",
        "max_draft",
        "n_new",
        "nav_end",
        "nav_start",
        "pending",
        "policy",
        "record",
        "sent_end",
        "surviving",
        "uploaded",
        "verify_at",
    )

    record: TokenLedger
    """The current request's record (set by `begin`)."""

    def __init__(self, policy: Policy, max_draft_tokens: int) -> None:
        self.policy = policy
        self._on_draft = policy.on_draft
        self.drafts_while_pending = policy.drafts_while_pending
        self.is_oracle = policy.is_oracle
        self.uploaded = policy.on_upload
        """An upload of `n_tokens` was answered `duration_s` after it was sent (a report):
        `uploaded(n_tokens, duration_s)` tells the policy (its `on_upload`, bound once)."""
        self.max_draft = max_draft_tokens
        """Safety cap: a VERIFY is forced once this many tokens are speculative."""
        self.n_new = self.limit = 0
        self.committed = self.drafted_end = self.sent_end = 0
        self.nav_start = self.nav_end = 0
        self.pending = self.deferred = False
        self.surviving = 0
        """Proactive tokens that survived the last answer (0: the draft was rolled back to
        the committed tokens, the answer's token being the last of them)."""
        self.first_token_s = -1.0
        self.verify_at = 0
        """The draft length that forces a VERIFY: the cap, and with no NAV pending the
        request's last token (kept up to date as `committed` and `pending` change)."""

    def begin(self, record: TokenLedger, prompt_len: int, max_new_tokens: int, now_s: float) -> int:
        """A request of `max_new_tokens` starts after a `prompt_len` prompt (the policy is
        told: `start_request`); its counters go to `record`. Returns the first step."""
        self.record = record
        self.n_new = max_new_tokens
        self.limit = max_new_tokens - 1  # the last token always comes from the cloud
        self.committed = self.drafted_end = self.sent_end = 0
        self.nav_start = self.nav_end = 0
        self.pending = self.deferred = False
        self.surviving = 0
        self.first_token_s = -1.0
        self.verify_at = min(self.max_draft, self.limit)
        self.policy.start_request(RequestStart(prompt_len, max_new_tokens, now_s))
        return ROUND if self.is_oracle else self._next_step()

    def _next_step(self) -> int:
        """The step at a token boundary when nothing is left to send."""
        if self.pending:
            if self.deferred or not self.drafts_while_pending or self.drafted_end >= self.limit:
                return ANSWER
            return DRAFT
        if self.drafted_end >= self.limit:
            return VERIFY
        return DRAFT

    def drafted(self, confidence: float, draft_time_s: float) -> int:
        """A token was drafted in `draft_time_s` with top-1 probability `confidence`: DRAFT,
        SEND, VERIFY or ANSWER. With VERIFY_DROP_LAST the token is discarded (`drafted_end`
        goes back by one: the executor drops it too)."""
        record = self.record
        record.edge_busy_s += draft_time_s
        record.drafted += 1
        end = self.drafted_end + 1
        self.drafted_end = end
        pending = self.pending
        decision = self._on_draft(confidence, draft_time_s, pending)
        if decision <= _SEND and end >= self.verify_at:
            decision = _VERIFY
        if decision == _CONTINUE:
            if pending and end >= self.limit:
                return ANSWER
            return DRAFT
        if decision == _SEND:
            if end > self.sent_end:
                return SEND
            return ANSWER if pending and end >= self.limit else DRAFT
        if decision == _DROP_LAST:
            self.drafted_end = end - 1
            record.discarded += 1
        if pending:
            self.deferred = True
            return ANSWER
        return VERIFY

    def sent(self, nav: bool) -> int:
        """The executor handed [sent_end, drafted_end) to the uplink: as a NAV (`nav`), which
        verifies [committed, drafted_end), or as an upload. Returns the next step."""
        end = self.sent_end = self.drafted_end
        if nav:
            self.nav_start = self.committed
            self.nav_end = end
            self.pending = True
            self.verify_at = self.committed + self.max_draft
            if self.drafts_while_pending and end < self.limit:
                return DRAFT
            return ANSWER
        if self.pending:  # a proactive upload; as _next_step, inlined (one call per message)
            if self.deferred or not self.drafts_while_pending or end >= self.limit:
                return ANSWER
            return DRAFT
        return VERIFY if end >= self.limit else DRAFT

    def answered(self, accepted: int, guessed: bool, now_s: float) -> int:
        """The pending NAV's answer is processed at `now_s`: its first `accepted` tokens were
        accepted and one more token came with it; `guessed`: the edge's proactive guess of
        that token was right (ignored unless tokens were drafted past the NAV). Returns the
        next step: SEND or VERIFY if the policy asks so for surviving proactive tokens."""
        start, end = self.nav_start, self.nav_end
        verified = end - start
        if not 0 <= accepted <= verified:
            raise ValueError(f"an answer accepted {accepted} of {verified} tokens")
        record = self.record
        new_committed = start + accepted + 1
        drafted_end = self.drafted_end
        surviving = surviving_sent = 0
        if drafted_end > end:
            if accepted == verified and guessed:
                surviving = drafted_end - end - 1
                surviving_sent = max(0, self.sent_end - end - 1)
                record.promoted += surviving
                record.bonus_matches += 1
            else:
                record.discarded += drafted_end - end
                record.rollbacks += 1
        if surviving:
            self.sent_end = max(self.sent_end, new_committed)
        else:
            self.drafted_end = self.sent_end = new_committed
        n_new = self.n_new
        committed = self.committed = new_committed if new_committed < n_new else n_new
        if self.first_token_s < 0:
            self.first_token_s = now_s
        record.navs += 1
        record.verified += verified
        record.accepted += accepted
        self.pending = self.deferred = False
        self.surviving = surviving
        cap, limit = committed + self.max_draft, self.limit
        self.verify_at = cap if cap < limit else limit
        outcome = _new_tuple(VerifyOutcome, (verified, accepted, surviving, surviving_sent, now_s))
        decision = self.policy.on_result(outcome)
        if committed >= n_new:
            return DONE
        if surviving:
            if decision == _VERIFY:
                return VERIFY
            if decision == _SEND and self.drafted_end > self.sent_end:
                return SEND
        elif self.is_oracle:
            return ROUND  # drafting starts afresh
        return VERIFY if self.drafted_end >= limit else DRAFT  # as _next_step, nothing pending

    def round_start(self, accept_run: int, hints: CostHints) -> int:
        """Oracles: drafting starts afresh and the next `accept_run` positions will be
        accepted. Returns VERIFY (a NAV without drafting) or the next step."""
        if self.policy.on_round_start(accept_run, hints) == _VERIFY:
            return VERIFY
        return self._next_step()

    def finish(self, end_s: float) -> None:
        """The request ends at `end_s` with its `max_new_tokens` generated."""
        record = self.record
        record.new_tokens = self.n_new
        record.first_token_s = self.first_token_s
        record.end_s = end_s
