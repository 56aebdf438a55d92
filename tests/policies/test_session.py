"""The bookkeeping core (policies/session.py) under scripted policies and random answers:
token conservation, causality (nothing sent before it is drafted, one NAV at a time, the
caps), and determinism."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import CostHints, Decision, Policy, VerifyOutcome
from policies.session import (
    ANSWER,
    DONE,
    DRAFT,
    ROUND,
    SEND,
    VERIFY,
    SpeculativeSession,
    TokenCounts,
)


class Scripted(Policy):
    """Answers from fixed scripts, cycling; remembers every outcome it was told."""

    def __init__(
        self,
        drafts: list[Decision],
        results: list[Decision],
        proactive: bool,
        oracle: bool = False,
    ) -> None:
        self.drafts, self.results = drafts, results
        self.drafts_while_pending, self.is_oracle = proactive, oracle
        self.calls = 0
        self.outcomes: list[VerifyOutcome] = []
        self.uploads: list[tuple[int, float]] = []

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self.calls += 1
        return self.drafts[self.calls % len(self.drafts)]

    def on_upload(self, n_tokens: int, duration_s: float) -> None:
        self.uploads.append((n_tokens, duration_s))

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        self.outcomes.append(outcome)
        return self.results[len(self.outcomes) % len(self.results)]

    def on_round_start(self, accept_run: int, hints: CostHints) -> Decision:
        return Decision.VERIFY if accept_run == 0 else Decision.CONTINUE


def run(
    policy: Scripted, n_new: int, max_draft: int, answers: list[tuple[int, int, bool]]
) -> tuple[TokenCounts, list[tuple[object, ...]]]:
    """Drive one request; answers cycle through (tokens drafted before it arrives, accepted
    share in 0..4 quarters, guess right). Checks causality at every step; returns the
    counters and the event log."""
    core = SpeculativeSession(policy, max_draft)
    counts = TokenCounts()
    log: list[tuple[object, ...]] = []
    step = core.begin(counts, 8, n_new, 0.0)
    budget, answer_index, now = 0, 0, 0.0
    uploaded: set[int] = set()  # positions handed to the uplink since the last rollback
    for _ in range(100 * n_new + 100):
        # the last token comes from the cloud: drafts stop before it
        assert 0 <= core.committed <= core.sent_end <= core.drafted_end
        assert core.drafted_end <= max(n_new - 1, core.committed)
        # the cap bounds a NAV; one proactive token past it makes the edge wait (deferred)
        assert core.drafted_end - core.committed <= max_draft + core.pending
        if step == DONE:
            break
        if core.pending and (step == ANSWER or budget <= 0):
            _, quarters, guessed = answers[answer_index % len(answers)]
            answer_index += 1
            verified = core.nav_end - core.nav_start
            accepted = verified * quarters // 4
            before = (core.drafted_end, core.nav_end, core.committed)
            now += 1.0
            step = core.answered(accepted, guessed, now)
            outcome = policy.outcomes[-1]
            assert (outcome.verified, outcome.accepted) == (verified, accepted)
            assert outcome.surviving == core.surviving <= max(before[0] - before[1] - 1, 0)
            assert core.committed == min(before[2] + accepted + 1, n_new)
            if not core.surviving:
                uploaded = {p for p in uploaded if p < core.drafted_end}
            log.append(("answer", accepted, guessed, step))
            continue
        assert step != ANSWER, "ANSWER only with a NAV pending"
        if step == ROUND:
            step = core.round_start(answer_index % 3, CostHints(0.1, 0.01, 0.02))
            log.append(("round", step))
        elif step in (SEND, VERIFY):
            nav = step == VERIFY
            first, end, start = core.sent_end, core.drafted_end, core.committed
            assert nav or end > first, "an upload carries tokens"
            assert not (nav and core.pending), "one NAV at a time"
            assert not uploaded & set(range(first, end)), "no token is uploaded twice"
            uploaded |= set(range(first, end))
            if nav:
                budget = answers[answer_index % len(answers)][0]
            step = core.sent(nav)
            assert core.sent_end == end
            if nav:
                assert core.pending and (core.nav_start, core.nav_end) == (start, end)
                assert end - start <= max_draft, "the draft cap bounds every NAV"
                assert step in (DRAFT, ANSWER)
            log.append(("sent", first, end, nav))
        else:
            assert step == DRAFT
            assert not core.pending or policy.drafts_while_pending
            budget -= core.pending
            now += 0.1
            before = core.drafted_end
            step = core.drafted(0.5, 0.1)
            assert core.drafted_end in (before, before + 1)
            log.append(("draft", core.drafted_end, step))
    else:
        pytest.fail("the request never completed")
    return counts, log


DECISIONS = st.sampled_from(list(Decision))
RESULTS = st.sampled_from([Decision.CONTINUE, Decision.SEND, Decision.VERIFY])


@settings(max_examples=300, deadline=None)
@given(
    drafts=st.lists(DECISIONS, min_size=1, max_size=12),
    results=st.lists(RESULTS, min_size=1, max_size=4),
    proactive=st.booleans(),
    oracle=st.booleans(),
    n_new=st.integers(1, 40),
    max_draft=st.integers(1, 12),
    answers=st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 4), st.booleans()), min_size=1, max_size=8
    ),
)
def test_tokens_are_conserved_and_caused_and_runs_repeat(
    drafts: list[Decision],
    results: list[Decision],
    proactive: bool,
    oracle: bool,
    n_new: int,
    max_draft: int,
    answers: list[tuple[int, int, bool]],
) -> None:
    counts, log = run(Scripted(drafts, results, proactive, oracle), n_new, max_draft, answers)
    assert counts.drafted == counts.verified + counts.discarded + counts.bonus_matches
    assert 0 <= counts.accepted <= counts.verified
    assert counts.navs >= 1
    assert counts.promoted <= counts.drafted
    again, log_again = run(Scripted(drafts, results, proactive, oracle), n_new, max_draft, answers)
    assert (astuple(again), log_again) == (astuple(counts), log)


def test_the_draft_cap_forces_a_verify() -> None:
    core = SpeculativeSession(Scripted([Decision.CONTINUE], [Decision.CONTINUE], False), 3)
    counts = TokenCounts()
    assert core.begin(counts, 8, 100, 0.0) == DRAFT
    assert [core.drafted(0.9, 0.1) for _ in range(3)] == [DRAFT, DRAFT, VERIFY]
    assert core.sent(True) == ANSWER
    assert (core.nav_start, core.nav_end) == (0, 3)


def test_the_last_token_always_comes_from_the_cloud() -> None:
    """A request of n tokens drafts at most n - 1 of them before a NAV."""
    core = SpeculativeSession(Scripted([Decision.CONTINUE], [Decision.CONTINUE], False), 50)
    assert core.begin(TokenCounts(), 8, 4, 0.0) == DRAFT
    assert [core.drafted(0.9, 0.1) for _ in range(3)] == [DRAFT, DRAFT, VERIFY]
    core.sent(True)
    assert core.answered(3, False, 1.0) == DONE
    assert core.committed == 4


def test_a_verify_while_pending_is_deferred_until_the_answer() -> None:
    policy = Scripted([Decision.VERIFY], [Decision.CONTINUE], True)
    core = SpeculativeSession(policy, 16)
    counts = TokenCounts()
    core.begin(counts, 8, 40, 0.0)
    assert core.drafted(0.9, 0.1) == VERIFY
    assert core.sent(True) == DRAFT  # proactive: drafting goes on while the NAV is pending
    assert core.drafted(0.9, 0.1) == ANSWER  # a VERIFY now waits for the answer
    assert core.deferred
    # the draft accepted and the guess right: the guess is the answer's token, and no
    # proactive token came after it, so none survives
    assert core.answered(1, True, 1.0) == DRAFT
    assert (core.committed, core.drafted_end, core.surviving) == (2, 2, 0)
    assert (counts.bonus_matches, counts.discarded, counts.verified) == (1, 0, 1)


def test_a_wrong_guess_rolls_the_proactive_tokens_back() -> None:
    policy = Scripted([Decision.CONTINUE, Decision.VERIFY], [Decision.CONTINUE], True)
    core = SpeculativeSession(policy, 16)
    counts = TokenCounts()
    core.begin(counts, 8, 40, 0.0)
    assert core.drafted(0.9, 0.1) == VERIFY
    core.sent(True)
    assert [core.drafted(0.9, 0.1) for _ in range(2)] == [DRAFT, ANSWER]
    assert core.answered(1, False, 1.0) == DRAFT
    assert (core.committed, core.drafted_end, core.sent_end) == (2, 2, 2)
    assert (counts.rollbacks, counts.discarded) == (1, 2)


def test_verify_drop_last_discards_the_token_just_drafted() -> None:
    core = SpeculativeSession(Scripted([Decision.VERIFY_DROP_LAST], [Decision.CONTINUE], False), 8)
    counts = TokenCounts()
    core.begin(counts, 8, 40, 0.0)
    assert core.drafted(0.1, 0.1) == VERIFY
    assert (core.drafted_end, counts.drafted, counts.discarded) == (0, 1, 1)


def test_an_answer_accepting_more_than_it_verified_is_refused() -> None:
    core = SpeculativeSession(Scripted([Decision.VERIFY], [Decision.CONTINUE], False), 8)
    core.begin(TokenCounts(), 8, 40, 0.0)
    core.drafted(0.9, 0.1)
    core.sent(True)
    with pytest.raises(ValueError, match="accepted 2 of 1"):
        core.answered(2, False, 1.0)
