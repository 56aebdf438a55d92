"""`check_policy`: the checks every policy must pass, in the simulator and in realrun alike.

It drives a policy through a seeded synthetic session without any executor: the bookkeeping
core (policies/session.py) that the simulator and the testbed drive, fed with random
confidences, upload reports and verification answers (a NAV's answer arrives after 0-4 more
tokens drafted while it is pending, accepts a random prefix, and a coin says whether the
edge's guess of the bonus token was right). It runs twice with the same seed and checks that
every decision is a valid `Decision` and that both runs decided identically.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies.base import CostHints, Decision, Mode, Policy, RequestStart, VerifyOutcome
from policies.session import ANSWER, DONE, ROUND, SEND, VERIFY, SpeculativeSession, TokenCounts

PolicyFactory = Callable[[], Policy]

MAX_DRAFT_TOKENS = 16
"""The session's draft cap in the check (below the request length, so the cap is exercised)."""


class PolicyCheckError(AssertionError):
    """A policy broke the interface contract."""


class _Checked(Policy):
    """Forwards every callback to `inner`, checking and recording each decision it returns."""

    def __init__(self, inner: Policy, trace: list[tuple[str, int]]) -> None:
        self.inner, self.trace = inner, trace
        self.mode = inner.mode
        self.drafts_while_pending = inner.drafts_while_pending
        self.is_oracle = inner.is_oracle

    def start_request(self, event: RequestStart) -> None:
        self.inner.start_request(event)

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        decision = _checked(self.inner.on_draft(confidence, draft_time_s, pending))
        self.trace.append(("draft", int(decision)))
        return decision

    def on_upload(self, n_tokens: int, duration_s: float) -> None:
        self.inner.on_upload(n_tokens, duration_s)

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        answer = _checked(self.inner.on_result(outcome))
        if answer == Decision.VERIFY_DROP_LAST:
            raise PolicyCheckError("on_result may not answer VERIFY_DROP_LAST")
        self.trace.append(("result", int(answer)))
        return answer

    def on_round_start(self, accept_run: int, hints: CostHints) -> Decision:
        decision = _checked(self.inner.on_round_start(accept_run, hints))
        self.trace.append(("round", int(decision)))
        return decision


def _drive(policy: Policy, seed: int, requests: int, tokens: int) -> list[tuple[str, int]]:
    """Run a synthetic session through the bookkeeping core; return (event, decision) pairs."""
    rng = np.random.default_rng(seed)
    trace: list[tuple[str, int]] = []
    now = 0.0
    hint = CostHints(0.05, 0.1, 0.03)
    for size in policy.startup_probe_sizes():
        if size < 1:
            raise PolicyCheckError(f"probe size {size} must be >= 1")
        policy.on_upload(size, 0.05 + 0.1 * size)
    core = SpeculativeSession(_Checked(policy, trace), MAX_DRAFT_TOKENS)
    for _ in range(requests):
        if policy.mode != Mode.SPECULATIVE:
            policy.start_request(RequestStart(prompt_len=64, max_new_tokens=tokens, now_s=now))
            continue
        step = core.begin(TokenCounts(), 64, tokens, now)
        budget = 0  # tokens the edge can still draft before the pending answer arrives
        for _ in range(50 * tokens):
            if step == DONE:
                break
            if core.pending and (step == ANSWER or budget == 0):
                verified = core.nav_end - core.nav_start
                accepted = int(rng.integers(0, verified + 1))
                now += 0.2
                step = core.answered(accepted, bool(rng.random() < 0.5), now)
            elif step == ROUND:
                step = core.round_start(int(rng.integers(0, 8)), hint)
            elif step in (SEND, VERIFY):
                n_tokens = core.drafted_end - core.sent_end
                if n_tokens:
                    core.uploaded(n_tokens, 0.05 + 0.1 * float(rng.random()))
                if step == VERIFY:
                    budget = int(rng.integers(0, 5))
                step = core.sent(step == VERIFY)
            else:
                now += 0.03
                budget -= core.pending
                step = core.drafted(float(rng.uniform(0.05, 1.0)), 0.03)
        else:
            raise PolicyCheckError("the request never completed")
        state = policy.state()
        if not all(isinstance(k, str) and isinstance(v, float) for k, v in state.items()):
            raise PolicyCheckError("state() must map names to floats")
    return trace


def _checked(decision: object) -> Decision:
    if not isinstance(decision, Decision):
        raise PolicyCheckError(f"a callback returned {decision!r}, not a Decision")
    return decision


def check_policy(
    factory: PolicyFactory, seed: int = 0, requests: int = 3, tokens: int = 48
) -> None:
    """Raise PolicyCheckError unless two fresh instances behave identically and validly."""
    first = _drive(factory(), seed, requests, tokens)
    second = _drive(factory(), seed, requests, tokens)
    if first != second:
        index = next(
            (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
            min(len(first), len(second)),  # one trace is the other's beginning
        )
        raise PolicyCheckError(
            f"not deterministic under seed {seed}: first difference at step {index}"
        )
