"""Tests for PipeSD's token-batch planner against brute force and hand-checked plans."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.pipesd.batch_plan import batch_boundaries, plan_batches, plan_finish_time

COST = st.one_of(
    st.sampled_from([0.0, 0.125, 0.5, 1.0, 3.0]),
    st.floats(min_value=0.0, max_value=10.0, allow_subnormal=False),
)


def compositions(n: int) -> list[tuple[int, ...]]:
    """Every way to split n tokens into ordered positive batches (2^(n-1) of them)."""
    plans = []
    for cut_count in range(n):
        for cuts in combinations(range(1, n), cut_count):
            ends = (*cuts, n)
            plans.append(tuple(end - start for start, end in zip((0, *cuts), ends, strict=True)))
    return plans


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 10), alpha=COST, beta=COST, gamma=COST)
def test_dp_matches_brute_force(n: int, alpha: float, beta: float, gamma: float) -> None:
    sizes = plan_batches(n, alpha, beta, gamma)
    assert sum(sizes) == n
    assert all(isinstance(size, int) and size > 0 for size in sizes)

    finishes = {plan: plan_finish_time(plan, alpha, beta, gamma) for plan in compositions(n)}
    best = min(finishes.values())
    assert math.isclose(plan_finish_time(sizes, alpha, beta, gamma), best, rel_tol=1e-9)
    fewest = min(len(plan) for plan, finish in finishes.items() if finish == best)
    assert len(sizes) <= fewest


def test_compositions_count() -> None:
    assert len(compositions(10)) == 2**9
    assert len(set(compositions(6))) == 2**5


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.5), (0.0, 0.5), (0.5, 0.0), (0.0, 0.0)])
def test_all_tokens_ready_at_once_is_one_batch(alpha: float, beta: float) -> None:
    # γ = 0: finish = K·α + β·N, so one batch is optimal (a tie for α = 0, broken to fewest).
    assert plan_batches(7, alpha, beta, 0.0) == (7,)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_free_transmission_is_one_batch(alpha: float) -> None:
    # β = 0: every plan finishes at >= γ·N + α, which one batch sent at the last token achieves.
    assert plan_batches(7, alpha, 0.0, 1.0) == (7,)
    assert plan_finish_time((7,), alpha, 0.0, 1.0) == 7.0 + alpha


def test_free_messages_draft_bound() -> None:
    # α = 0, β = 0.5 < γ = 1: the last batch waits for token 4 and must be one token (4.5 s).
    # (4,), (1, 3), (2, 2), (3, 1) all finish later; three batches are the fewest reaching 4.5.
    assert plan_batches(4, 0.0, 0.5, 1.0) == (1, 2, 1)
    assert plan_finish_time((1, 2, 1), 0.0, 0.5, 1.0) == 4.5
    assert plan_finish_time((1, 1, 1, 1), 0.0, 0.5, 1.0) == 4.5


def test_free_messages_upload_bound() -> None:
    # α = 0, β = 2 > γ = 1: send token 1 alone at 1 s, then keep the uplink busy: 1 + 4·2 = 9 s.
    # Two batches reach 10 s at best; of the three-batch plans the last batch is kept largest.
    assert plan_batches(4, 0.0, 2.0, 1.0) == (1, 1, 2)
    assert plan_finish_time((1, 1, 2), 0.0, 2.0, 1.0) == 9.0
    assert plan_finish_time((1, 2, 1), 0.0, 2.0, 1.0) == 9.0


def test_draft_bound_prefers_few_messages() -> None:
    # α + β = 0.625 < γ = 1: a single-token last batch gives 10 + 0.625 s, and so do ten
    # single-token batches; (5, 4, 1) and (6, 3, 1) are the three-batch plans that tie with it,
    # no two-batch plan does, and the tie-break keeps the later batch larger.
    alpha, beta, gamma = 0.5, 0.125, 1.0
    assert plan_batches(10, alpha, beta, gamma) == (5, 4, 1)
    for plan in [(5, 4, 1), (6, 3, 1), (1,) * 10]:
        assert plan_finish_time(plan, alpha, beta, gamma) == 10.625
    two_batch = [plan for plan in compositions(10) if len(plan) == 2]
    assert min(plan_finish_time(plan, alpha, beta, gamma) for plan in two_batch) > 10.625


def test_plan_finish_time_simulates_each_batch() -> None:
    # Batch 1 (3 tokens): ready 3, done 3 + 1 + 1.5 = 5.5; batch 2 (2 tokens): ready 5, done
    # 5.5 + 2 = 7.5; batch 3 (4 tokens): ready 9, done 9 + 1 + 2 = 12.
    assert plan_finish_time((3, 2, 4), 1.0, 0.5, 1.0) == 12.0


def test_batch_boundaries() -> None:
    assert batch_boundaries((3, 2, 4)) == (3, 5, 9)
    assert batch_boundaries((1,)) == (1,)


def test_large_plans_are_valid_and_fast_enough_to_call() -> None:
    for alpha, beta, gamma in [(0.05, 0.1, 0.036), (0.05, 0.01, 0.036), (0.01, 0.001, 0.036)]:
        sizes = plan_batches(256, alpha, beta, gamma)
        assert sum(sizes) == 256
        assert plan_finish_time(sizes, alpha, beta, gamma) <= plan_finish_time(
            (256,), alpha, beta, gamma
        )


@pytest.mark.parametrize("n_tokens", [0, -3, 2.0, True, "4"])
def test_invalid_token_count(n_tokens: object) -> None:
    with pytest.raises(ValueError, match="n_tokens"):
        plan_batches(n_tokens, 0.1, 0.1, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf, -math.inf, "0.1", None])
@pytest.mark.parametrize("name", ["alpha_s", "beta_s", "gamma_s"])
def test_invalid_costs(name: str, bad: object) -> None:
    costs = {"alpha_s": 0.1, "beta_s": 0.1, "gamma_s": 0.1, name: bad}
    with pytest.raises(ValueError, match=name):
        plan_batches(4, **costs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        plan_finish_time((2, 2), **costs)  # type: ignore[arg-type]


@pytest.mark.parametrize("sizes", [(), (0,), (2, -1), (1.5,), (True,)])
def test_invalid_sizes(sizes: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="size"):
        plan_finish_time(sizes, 0.1, 0.1, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        batch_boundaries(sizes)  # type: ignore[arg-type]
