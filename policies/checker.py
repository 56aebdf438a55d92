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
    """Run a synthetic session; return the sequence of (event, decision) pairs."""
    rng = np.random.default_rng(seed)
    trace: list[tuple[str, int]] = []
    now = 0.0
    for size in policy.startup_probe_sizes():
        if size < 1:
            raise PolicyCheckError(f"probe size {size} must be >= 1")
        policy.on_upload(size, 0.05 + 0.1 * size)
    for _ in range(requests):
        policy.start_request(RequestStart(prompt_len=64, max_new_tokens=tokens, now_s=now))
        if policy.mode == Mode.CLOUD_AUTOREGRESSIVE:
            continue
        committed, drafted, pending, steps = 0, 0, False, 0
        if policy.is_oracle:
            trace.append(("round", int(policy.on_round_start(int(rng.integers(0, 8)), CostHints(0.05, 0.1, 0.03)))))
        while committed < tokens:
            steps += 1
            if steps > 50 * tokens:
                raise PolicyCheckError("policy never asked for verification")
            now += 0.03
            decision = policy.on_draft(float(rng.uniform(0.05, 1.0)), 0.03, pending)
            if not isinstance(decision, Decision):
                raise PolicyCheckError(f"on_draft returned {decision!r}, not a Decision")
            if pending and decision == Decision.VERIFY_DROP_LAST and not policy.drafts_while_pending:
                raise PolicyCheckError("drafted while pending without drafts_while_pending")
            trace.append(("draft", int(decision)))
            drafted += 1
            if decision == Decision.SEND:
                policy.on_upload(1, 0.05 + 0.1 * float(rng.random()))
            if decision in (Decision.VERIFY, Decision.VERIFY_DROP_LAST) or drafted >= 64:
                verified = drafted - (decision == Decision.VERIFY_DROP_LAST)
                accepted = int(rng.integers(0, verified + 1))
                survivors = int(rng.integers(0, 3)) if policy.drafts_while_pending and accepted == verified else 0
                now += 0.2
                answer = policy.on_result(VerifyOutcome(verified, accepted, survivors, 0, now))
                if not isinstance(answer, Decision) or answer == Decision.VERIFY_DROP_LAST:
                    raise PolicyCheckError(f"on_result returned {answer!r}")
                trace.append(("result", int(answer)))
                committed += accepted + 1
                drafted = survivors
                if policy.is_oracle:
                    hint = CostHints(0.05, 0.1, 0.03)
                    trace.append(("round", int(policy.on_round_start(int(rng.integers(0, 8)), hint))))
        state = policy.state()
        if not all(isinstance(k, str) and isinstance(v, float) for k, v in state.items()):
            raise PolicyCheckError("state() must map names to floats")
    return trace


def check_policy(factory: PolicyFactory, seed: int = 0, requests: int = 3, tokens: int = 48) -> None:
    """Raise PolicyCheckError unless two fresh instances behave identically and validly."""
    first = _drive(factory(), seed, requests, tokens)
    second = _drive(factory(), seed, requests, tokens)
    if first != second:
        index = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
        raise PolicyCheckError(f"not deterministic under seed {seed}: first difference at step {index}")
