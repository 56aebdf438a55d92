"""`check_policy`: the checks every policy must pass, in the simulator and in realrun alike.

It drives a policy through a seeded synthetic session (drafted tokens with random confidences,
upload reports, verification answers with random acceptance, proactive survivors) without any
executor, twice with the same seed, and checks that the decisions are valid and identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies.base import CostHints, Decision, Mode, Policy, RequestStart, VerifyOutcome

PolicyFactory = Callable[[], Policy]


class PolicyCheckError(AssertionError):
    """A policy broke the interface contract."""


def _drive(policy: Policy, seed: int, requests: int, tokens: int) -> list[tuple[str, int]]:
    """Run a synthetic session like a miniature executor; return (event, decision) pairs.

    A NAV stays pending while 0-4 more tokens are drafted (when the policy drafts while
    pending), answers accept a random prefix, and proactive tokens survive when the whole draft
    was accepted and a coin says the bonus guess was right.
    """
    rng = np.random.default_rng(seed)
    trace: list[tuple[str, int]] = []
    now = 0.0
    hint = CostHints(0.05, 0.1, 0.03)
    for size in policy.startup_probe_sizes():
        if size < 1:
            raise PolicyCheckError(f"probe size {size} must be >= 1")
        policy.on_upload(size, 0.05 + 0.1 * size)
    for _ in range(requests):
        policy.start_request(RequestStart(prompt_len=64, max_new_tokens=tokens, now_s=now))
        if policy.mode != Mode.SPECULATIVE:
            continue
        committed, drafted, steps = 0, 0, 0
        verifying: int | None = None  # draft tokens of the pending NAV
        ahead = deferred = 0  # tokens drafted while pending; a VERIFY is waiting
        budget = 0  # tokens the edge can still draft before the answer arrives
        if policy.is_oracle:
            trace.append(("round", _checked(policy.on_round_start(int(rng.integers(0, 8)), hint))))
        while committed < tokens:
            steps += 1
            if steps > 50 * tokens:
                raise PolicyCheckError("policy never asked for verification")
            if verifying is not None and (
                not policy.drafts_while_pending or deferred or budget == 0
            ):
                accepted = int(rng.integers(0, verifying + 1))
                survivors = (
                    ahead - 1 if accepted == verifying and ahead and rng.random() < 0.5 else 0
                )
                now += 0.2
                outcome = VerifyOutcome(verifying, accepted, survivors, 0, now)
                answer = _checked(policy.on_result(outcome))
                if answer == Decision.VERIFY_DROP_LAST:
                    raise PolicyCheckError("on_result may not answer VERIFY_DROP_LAST")
                trace.append(("result", int(answer)))
                committed += accepted + 1
                drafted, verifying, ahead, deferred = survivors, None, 0, 0
                if survivors and answer == Decision.VERIFY:
                    verifying, drafted, budget = survivors, 0, int(rng.integers(0, 5))
                elif not survivors and policy.is_oracle:
                    trace.append(
                        ("round", _checked(policy.on_round_start(int(rng.integers(0, 8)), hint)))
                    )
                continue
            pending = verifying is not None
            now += 0.03
            decision = _checked(policy.on_draft(float(rng.uniform(0.05, 1.0)), 0.03, pending))
            trace.append(("draft", int(decision)))
            if decision == Decision.SEND:
                policy.on_upload(1, 0.05 + 0.1 * float(rng.random()))
            if pending:
                ahead += 1
                budget -= 1
                deferred = decision in (Decision.VERIFY, Decision.VERIFY_DROP_LAST)
                continue
            drafted += 1
            if decision in (Decision.VERIFY, Decision.VERIFY_DROP_LAST) or drafted >= 64:
                verifying = drafted - (decision == Decision.VERIFY_DROP_LAST)
                drafted, budget = 0, int(rng.integers(0, 5))
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
        index = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
        raise PolicyCheckError(
            f"not deterministic under seed {seed}: first difference at step {index}"
        )
