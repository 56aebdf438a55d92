"""Each policy's rule, exercised through its callbacks alone (no executor)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import CostHints, Decision, Policy, RequestStart, VerifyOutcome
from policies.baselines.oracle import first_chunk, nav_cost
from policies.pipesd.batch_plan import batch_boundaries, plan_batches
from policies.registry import make_policy, params_model

CONTINUE, SEND, VERIFY, DROP = (
    Decision.CONTINUE,
    Decision.SEND,
    Decision.VERIFY,
    Decision.VERIFY_DROP_LAST,
)
HINTS = CostHints(alpha_s=0.05, beta_s=0.1, gamma_s=0.03, round_trip_s=0.2)
START = RequestStart(prompt_len=32, max_new_tokens=256, now_s=0.0)
FIXED = {"autotune": False}
"""PipeSD with its configured thresholds (the autotuner would pick its own start point)."""


def build(name: str, seed: int = 0, **params: Any) -> Policy:
    policy = make_policy(name, params_model(name).model_validate(params), seed)
    policy.start_request(START)
    return policy


def outcome(verified: int, accepted: int, surviving: int = 0, sent: int = 0, now: float = 1.0):
    return VerifyOutcome(verified, accepted, surviving, sent, now)


def draft_until_verify(
    policy: Policy, confidences: list[float], dt: float = 0.03
) -> list[Decision]:
    """Feed confidences until the policy asks for verification; return every decision."""
    decisions = []
    for confidence in confidences:
        decisions.append(policy.on_draft(confidence, dt, False))
        if decisions[-1] in (VERIFY, DROP):
            break
    return decisions


# -- Vanilla -------------------------------------------------------------------------------------


@given(
    draft_len=st.integers(1, 12),
    rounds=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    confidences=st.lists(st.floats(0.001, 1.0), min_size=12, max_size=12),
)
def test_vanilla_verifies_exactly_every_draft_len(
    draft_len: int, rounds: list[int], confidences: list[float]
) -> None:
    policy = build("vanilla", draft_len=draft_len)
    for accepted in rounds:
        decisions = [policy.on_draft(c, 0.03, False) for c in confidences[:draft_len]]
        assert decisions == [CONTINUE] * (draft_len - 1) + [VERIFY]
        assert policy.on_result(outcome(draft_len, min(accepted, draft_len))) == CONTINUE
    assert policy.state() == {"draft_len": float(draft_len)}


def test_vanilla_restarts_count_on_a_new_request() -> None:
    policy = build("vanilla", draft_len=3)
    assert policy.on_draft(0.9, 0.03, False) == CONTINUE
    policy.start_request(START)
    assert [policy.on_draft(0.9, 0.03, False) for _ in range(3)] == [CONTINUE, CONTINUE, VERIFY]


# -- HSL -----------------------------------------------------------------------------------------


@given(
    r2=st.floats(0.05, 0.99),
    max_len=st.integers(1, 20),
    confidences=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
)
def test_hsl_verifies_at_first_low_token_or_cap(
    r2: float, max_len: int, confidences: list[float]
) -> None:
    policy = build("hsl", r2=r2, max_draft_len=max_len)
    for _ in range(2):
        decisions = draft_until_verify(policy, confidences)
        low = next((i for i, c in enumerate(confidences) if c < r2), len(confidences))
        stop = min(low, max_len - 1)
        assert decisions == [CONTINUE] * stop + [VERIFY]
        policy.on_result(outcome(stop + 1, 0))


def test_hsl_token_at_threshold_is_not_low() -> None:
    policy = build("hsl", r2=0.7, max_draft_len=16)
    assert draft_until_verify(policy, [0.7, 0.7, 0.69]) == [CONTINUE, CONTINUE, VERIFY]


# -- llama.cpp p_min -----------------------------------------------------------------------------


@given(
    p_min=st.floats(0.0, 1.0),
    draft_max=st.integers(1, 20),
    confidences=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
)
def test_pmin_drops_low_token_or_verifies_at_draft_max(
    p_min: float, draft_max: int, confidences: list[float]
) -> None:
    policy = build("pmin", p_min=p_min, draft_max=draft_max)
    for _ in range(2):
        decisions = draft_until_verify(policy, confidences)
        low = next((i for i, c in enumerate(confidences) if c < p_min), math.inf)
        if low < draft_max:
            assert decisions == [CONTINUE] * low + [DROP]
        else:
            assert decisions == [CONTINUE] * (draft_max - 1) + [VERIFY]
        policy.on_result(outcome(len(decisions), 0))


def test_pmin_low_token_at_draft_max_is_dropped() -> None:
    policy = build("pmin", p_min=0.5, draft_max=2)
    assert draft_until_verify(policy, [0.9, 0.1]) == [CONTINUE, DROP]


# -- Hugging Face heuristic ----------------------------------------------------------------------


def test_hf_heuristic_grows_by_two_on_full_acceptance_and_shrinks_by_one() -> None:
    policy = build("hf_heuristic", num_assistant_tokens=3, confidence_threshold=0.4)
    assert policy.state() == {"num_assistant_tokens": 3.0}
    assert draft_until_verify(policy, [0.9] * 10) == [CONTINUE, CONTINUE, VERIFY]
    policy.on_result(outcome(3, 3))
    assert policy.state()["num_assistant_tokens"] == 5.0
    assert draft_until_verify(policy, [0.9] * 10) == [CONTINUE] * 4 + [VERIFY]
    policy.on_result(outcome(5, 4))
    assert policy.state()["num_assistant_tokens"] == 4.0
    for _ in range(6):
        policy.on_result(outcome(1, 0))
    assert policy.state()["num_assistant_tokens"] == 1.0
    assert draft_until_verify(policy, [0.9] * 10) == [VERIFY]


def test_hf_heuristic_growth_is_capped() -> None:
    policy = build("hf_heuristic", num_assistant_tokens=5, max_draft_len=6)
    policy.on_result(outcome(5, 5))
    assert policy.state()["num_assistant_tokens"] == 6.0
    policy.on_result(outcome(6, 6))
    assert policy.state()["num_assistant_tokens"] == 6.0


def test_hf_heuristic_stops_below_confidence_threshold_and_keeps_the_token() -> None:
    policy = build("hf_heuristic", num_assistant_tokens=20, confidence_threshold=0.4)
    assert draft_until_verify(policy, [0.9, 0.4, 0.39, 0.9]) == [CONTINUE, CONTINUE, VERIFY]
    # A draft stopped early by confidence did not accept all scheduled tokens: shrink.
    policy.on_result(outcome(3, 3))
    assert policy.state()["num_assistant_tokens"] == 19.0


# -- EdgeLLM -------------------------------------------------------------------------------------


def test_edgellm_shrinks_threshold_by_m_after_full_acceptance() -> None:
    policy = build("edgellm", threshold=0.5, shrink=0.8)
    assert draft_until_verify(policy, [0.9, 0.9, 0.5]) == [CONTINUE, CONTINUE, VERIFY]
    assert policy.on_result(outcome(3, 3)) == CONTINUE
    assert policy.state()["threshold"] == pytest.approx(0.4)
    # 0.9 * 0.9 * 0.5 = 0.405 is no longer below a = 0.4
    assert draft_until_verify(policy, [0.9, 0.9, 0.5, 0.9]) == [CONTINUE] * 3 + [VERIFY]


@given(
    threshold=st.floats(0.05, 0.95),
    cap=st.floats(0.1, 1.99),
    confidences=st.lists(st.floats(0.05, 1.0), min_size=1, max_size=16),
    data=st.data(),
)
def test_edgellm_grows_threshold_after_partial_acceptance(
    threshold: float, cap: float, confidences: list[float], data: st.DataObject
) -> None:
    policy = build("edgellm", threshold=threshold, cap=max(cap, threshold), max_draft_len=16)
    decisions = draft_until_verify(policy, confidences + [0.01] * 16)
    n = len(decisions)
    c1 = math.prod((confidences + [0.01] * 16)[:n])
    accepted = data.draw(st.integers(0, n - 1))
    policy.on_result(outcome(n, accepted))
    expected = min(max(cap, threshold), threshold / max(c1, 1e-12) ** ((n - accepted) / n))
    assert policy.state()["threshold"] == pytest.approx(expected, rel=1e-9)
    assert policy.state()["threshold"] >= threshold * (1 - 1e-12)


def test_edgellm_growth_is_capped() -> None:
    policy = build("edgellm", threshold=0.5, cap=0.6)
    draft_until_verify(policy, [0.3])
    policy.on_result(outcome(1, 0))
    assert policy.state()["threshold"] == pytest.approx(0.6)


def test_edgellm_drafts_while_pending_and_defers_verify_until_the_answer() -> None:
    policy = build("edgellm", threshold=0.5, shrink=0.8)
    assert policy.drafts_while_pending
    assert policy.on_draft(0.4, 0.03, False) == VERIFY  # NAV sent, answer pending
    assert policy.on_draft(0.9, 0.03, True) == CONTINUE
    assert policy.on_draft(0.5, 0.03, True) == VERIFY  # 0.45 < 0.5 while pending: deferred
    # The pending draft was fully accepted and both tokens drafted meanwhile survive.
    assert policy.on_result(outcome(1, 1, surviving=2)) == VERIFY
    assert policy.state()["threshold"] == pytest.approx(0.4)
    # The survivors were submitted: the next answer grows a with their product 0.45.
    policy.on_result(outcome(2, 1))
    assert policy.state()["threshold"] == pytest.approx(0.4 / 0.45**0.5)


def test_edgellm_deferred_trigger_without_survivors_continues() -> None:
    policy = build("edgellm", threshold=0.5, cap=0.55)
    policy.on_draft(0.4, 0.03, False)
    assert policy.on_draft(0.3, 0.03, True) == VERIFY
    assert policy.on_result(outcome(1, 0)) == CONTINUE
    assert policy.state()["threshold"] == pytest.approx(0.55)
    # Nothing carried over: a fresh draft starts with product 1 (0.3 * 0.6 would be < 0.55).
    assert policy.on_draft(0.6, 0.03, False) == CONTINUE


def test_edgellm_survivors_without_trigger_continue_with_their_product() -> None:
    policy = build("edgellm", threshold=0.5, shrink=1.0)
    policy.on_draft(0.4, 0.03, False)
    assert policy.on_draft(0.8, 0.03, True) == CONTINUE
    assert policy.on_draft(0.8, 0.03, True) == CONTINUE
    assert policy.on_result(outcome(1, 1, surviving=1)) == CONTINUE
    # The surviving token (0.8) still counts: 0.8 * 0.6 = 0.48 < 0.5.
    assert policy.on_draft(0.6, 0.03, False) == VERIFY


# -- PipeSD --------------------------------------------------------------------------------------


def expected_plan(policy: Policy) -> frozenset[int]:
    state = policy.state()
    window = int(state["window"])
    sizes = plan_batches(window, state["alpha_s"], state["beta_s"], state["gamma_s"])
    return frozenset(batch_boundaries(sizes))


COST_PRIORS = [
    {"initial_alpha_s": 0.05, "initial_beta_s": 0.1, "initial_gamma_s": 0.036},
    {"initial_alpha_s": 0.01, "initial_beta_s": 0.02, "initial_gamma_s": 0.036},
    {"initial_alpha_s": 0.02, "initial_beta_s": 0.03, "initial_gamma_s": 0.036},
    {"initial_alpha_s": 0.0, "initial_beta_s": 0.001, "initial_gamma_s": 0.05},
]


@pytest.mark.parametrize("window", [1, 5, 20, 37])
@pytest.mark.parametrize("priors", COST_PRIORS)
def test_pipesd_sends_exactly_at_plan_boundaries(window: int, priors: dict[str, float]) -> None:
    policy = build("pipesd", **FIXED, **priors, initial_window=window, max_draft_len=64)
    gamma = priors["initial_gamma_s"]
    boundaries = expected_plan(policy)
    assert max(boundaries) == window
    decisions = draft_until_verify(policy, [1.0] * 64, dt=gamma)
    assert len(decisions) == 64 and decisions[-1] == VERIFY
    for k, decision in enumerate(decisions[:-1], start=1):
        in_plan = ((k - 1) % window) + 1 in boundaries
        assert decision == (SEND if in_plan else CONTINUE), k
    if len(boundaries) > 1:
        assert decisions.count(SEND) > 64 // window


def test_pipesd_plan_follows_the_window_after_answers() -> None:
    policy = build("pipesd", **FIXED, initial_alpha_s=0.01, initial_beta_s=0.02, initial_window=20)
    for _ in range(3):  # drafts of 8 tokens (the 8th falls below r2)
        decisions = draft_until_verify(policy, [1.0] * 7 + [0.5], dt=0.036)
        assert decisions[-1] == VERIFY and len(decisions) == 8
        policy.on_result(outcome(8, 3))
    state = policy.state()
    assert state["window"] == 8.0
    boundaries = expected_plan(policy)
    decisions = [policy.on_draft(1.0, 0.036, False) for _ in range(16)]
    sends = {k for k, d in enumerate(decisions, start=1) if d == SEND}
    assert sends == {k for k in range(1, 17) if ((k - 1) % 8) + 1 in boundaries}


@settings(max_examples=50)
@given(confidences=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=200))
def test_pipesd_without_pipeline_never_sends_when_not_pending(confidences: list[float]) -> None:
    policy = build("pipesd", pipeline=False, autotune=False)
    assert policy.startup_probe_sizes() == ()
    drafted = 0
    for confidence in confidences:
        decision = policy.on_draft(confidence, 0.03, False)
        assert decision != SEND
        drafted += 1
        if decision == VERIFY:
            policy.on_result(outcome(drafted, drafted // 2, now=float(drafted)))
            drafted = 0


def test_pipesd_fixed_batch_sends_every_k_tokens() -> None:
    policy = build("pipesd", **FIXED, fixed_batch=3, initial_window=10)
    decisions = draft_until_verify(policy, [1.0] * 20)
    sends = [k for k, d in enumerate(decisions, start=1) if d == SEND]
    assert sends == [3, 6, 9, 10, 13, 16, 19, 20]


def test_pipesd_dual_trigger_fires_on_either_threshold() -> None:
    policy = build("pipesd", **FIXED, pipeline=False, r1=0.3, r2=0.8)
    assert draft_until_verify(policy, [0.9] * 30)[-1] == VERIFY
    assert len(draft_until_verify(policy, [0.9] * 30)) == 12  # 0.9**12 < 0.3 <= 0.9**11
    assert draft_until_verify(policy, [0.95, 0.79]) == [CONTINUE, VERIFY]


def test_pipesd_token_trigger_ignores_sequence_product() -> None:
    policy = build("pipesd", **FIXED, pipeline=False, trigger="token", r1=0.3, r2=0.8)
    decisions = draft_until_verify(policy, [0.9] * 64)
    assert decisions == [CONTINUE] * 63 + [VERIFY]  # only the length cap stops it
    policy.on_result(outcome(64, 10))
    assert draft_until_verify(policy, [0.9, 0.79]) == [CONTINUE, VERIFY]


def test_pipesd_sequence_trigger_ignores_single_low_tokens() -> None:
    policy = build("pipesd", **FIXED, pipeline=False, trigger="sequence", r1=0.3, r2=0.8)
    # 0.5 is below r2 but the product 0.5 stays above r1; 0.5 * 0.55 = 0.275 < r1.
    assert draft_until_verify(policy, [0.5, 1.0, 0.55]) == [CONTINUE, CONTINUE, VERIFY]


def test_pipesd_probes_feed_the_upload_estimator() -> None:
    policy = build("pipesd", **FIXED, initial_alpha_s=0.5, initial_beta_s=0.01)
    sizes = policy.startup_probe_sizes()
    assert len(set(sizes)) >= 2 and min(sizes) >= 1
    for n in sizes:
        policy.on_upload(n, 0.05 + 0.1 * n)
    state = policy.state()
    assert state["alpha_s"] == pytest.approx(0.05, abs=1e-9)
    assert state["beta_s"] == pytest.approx(0.1, abs=1e-9)
    assert expected_plan(policy) == frozenset(
        batch_boundaries(plan_batches(int(state["window"]), 0.05, 0.1, state["gamma_s"]))
    )


def test_pipesd_replans_only_when_beta_moves_beyond_tolerance() -> None:
    policy = build(
        "pipesd", **FIXED, initial_alpha_s=0.05, initial_beta_s=0.1, replan_tolerance=0.2
    )
    replans = policy.state()["replans"]
    policy.on_upload(1, 0.05 + 0.1)  # β = 0.1: unchanged
    assert policy.state()["replans"] == replans
    policy.on_upload(1, 0.05 + 0.115)  # β = 0.115: +15 %
    assert policy.state()["replans"] == replans
    assert policy.state()["beta_s"] == pytest.approx(0.1)
    policy.on_upload(1, 0.05 + 0.13)  # β = 0.13: +30 %
    assert policy.state()["replans"] == replans + 1
    assert policy.state()["beta_s"] == pytest.approx(0.13)
    policy.on_upload(1, 0.05 + 0.12)  # -7.7 % from the new plan's 0.13
    assert policy.state()["replans"] == replans + 1
    policy.on_upload(1, 0.05 + 0.1)  # -23 %
    assert policy.state()["replans"] == replans + 2
    assert policy.state()["beta_s"] == pytest.approx(0.1)


def test_pipesd_autotune_changes_thresholds_after_a_window_of_tokens() -> None:
    r1_range, r2_range = (0.1, 0.7), (0.65, 0.95)
    policy = build(
        "pipesd",
        seed=4,
        tune_calls=6,
        tune_initial_points=3,
        tune_window_tokens=10,
        tune_r1_range=r1_range,
        tune_r2_range=r2_range,
    )

    def thresholds() -> tuple[float, float]:
        state = policy.state()
        assert r1_range[0] <= state["r1"] <= r1_range[1]
        assert r2_range[0] <= state["r2"] <= r2_range[1]
        return state["r1"], state["r2"]

    first = thresholds()
    now = 0.0
    for _ in range(2):  # 2 x (4 + 1) = 10 committed tokens: exactly one window
        assert thresholds() == first
        now += 0.5
        policy.on_result(outcome(5, 4, now=now))
    second = thresholds()
    assert second != first
    assert policy.state()["bo_evaluations"] == 1.0
    seen = {first, second}
    for step in range(40):
        now += 0.1 + 0.01 * step
        policy.on_result(outcome(3, 2, now=now))
        seen.add(thresholds())
    assert policy.state()["bo_evaluations"] == 6.0
    assert len(seen) >= 4


def test_pipesd_without_autotune_keeps_thresholds() -> None:
    policy = build("pipesd", autotune=False, r1=0.25, r2=0.75, tune_window_tokens=1)
    for step in range(10):
        policy.on_result(outcome(3, 2, now=float(step + 1)))
    state = policy.state()
    assert (state["r1"], state["r2"]) == (0.25, 0.75)
    assert state["bo_evaluations"] == 0.0


def test_pipesd_defers_verify_while_pending_and_sends_survivors() -> None:
    policy = build("pipesd", **FIXED, initial_window=4, r1=0.3, r2=0.8)
    assert policy.drafts_while_pending
    assert draft_until_verify(policy, [1.0, 1.0, 0.5])[-1] == VERIFY
    assert policy.on_draft(1.0, 0.036, True) == CONTINUE
    assert policy.on_draft(0.5, 0.036, True) == VERIFY  # deferred until the answer
    assert policy.on_result(outcome(3, 3, surviving=2, now=1.0)) == VERIFY


def test_pipesd_without_proactive_does_not_draft_while_pending() -> None:
    assert not build("pipesd", proactive=False).drafts_while_pending


# -- Oracle --------------------------------------------------------------------------------------


@given(accept_run=st.integers(1, 80), pipeline=st.booleans())
def test_oracle_verifies_exactly_after_its_first_chunk(accept_run: int, pipeline: bool) -> None:
    policy = build("oracle", pipeline=pipeline)
    assert policy.is_oracle
    chunk = first_chunk(accept_run, HINTS)
    assert 0 <= chunk <= accept_run
    for _ in range(2):
        decision = policy.on_round_start(accept_run, HINTS)
        if chunk == 0:
            assert decision == VERIFY
            continue
        assert decision == CONTINUE
        decisions = draft_until_verify(policy, [0.5] * (accept_run + 5))
        assert len(decisions) == chunk and decisions[-1] == VERIFY
        sends = {k for k, d in enumerate(decisions, start=1) if d == SEND}
        if pipeline:
            plan = plan_batches(chunk, HINTS.alpha_s, HINTS.beta_s, HINTS.gamma_s)
            assert sends == set(batch_boundaries(plan)) - {chunk}
        else:
            assert sends == set()
        policy.on_result(outcome(chunk, chunk))


@settings(max_examples=60, deadline=None)
@given(
    accept_run=st.integers(0, 9),
    alpha=st.floats(0.0, 0.2),
    beta=st.floats(0.0, 0.5),
    gamma=st.floats(0.001, 0.1),
    round_trip=st.floats(0.0, 0.5),
)
def test_oracle_split_matches_brute_force(accept_run, alpha, beta, gamma, round_trip) -> None:
    hints = CostHints(alpha, beta, gamma, round_trip)

    def best(positions: int) -> float:
        if positions == 0:
            return 0.0
        return min(nav_cost(k, hints) + best(positions - k - 1) for k in range(positions))

    chunk = first_chunk(accept_run, hints)
    optimum = best(accept_run + 1)
    assert nav_cost(chunk, hints) + best(accept_run - chunk) == pytest.approx(optimum, rel=1e-9)


def test_oracle_verifies_at_once_when_nothing_will_be_accepted() -> None:
    policy = build("oracle")
    assert policy.on_round_start(0, HINTS) == VERIFY


def test_oracle_caps_the_run_at_max_draft_len() -> None:
    policy = build("oracle", max_draft_len=4, pipeline=False)
    policy.on_round_start(10, HINTS)
    assert draft_until_verify(policy, [0.5] * 10) == [CONTINUE] * 3 + [VERIFY]
