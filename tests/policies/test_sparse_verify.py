"""Tests for PicoSpec's sparse verification: losslessness, the top-K error, payload bytes."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from policies.picospec.sparse_verify import (
    TAILS,
    acceptance_probability,
    downlink_bytes_per_round,
    exact_step,
    full_uplink_bytes_per_token,
    output_distribution_exact,
    output_distribution_sparse,
    round_bytes,
    sparse_step,
    sparse_target,
    top_k,
    topk_error,
    total_variation,
    uplink_bytes_per_token,
    zipf_pair,
)

P6 = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
Q6 = np.array([0.10, 0.30, 0.10, 0.30, 0.05, 0.15])
"""A fixed V = 6 pair that disagrees enough for rejections and residual draws to matter."""
SAMPLES = 20_000
EPS = 1e-12

WEIGHT = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-6, max_value=1.0, allow_nan=False, allow_subnormal=False),
)


@st.composite
def pairs(draw: st.DrawFn, max_vocab: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A (target, draft) pair of random distributions over 1..max_vocab tokens, zeros allowed."""
    vocab = draw(st.integers(min_value=1, max_value=max_vocab))
    out = []
    for _ in range(2):
        w = np.array(draw(st.lists(WEIGHT, min_size=vocab, max_size=vocab)))
        if w.sum() == 0:
            w[draw(st.integers(0, vocab - 1))] = 1.0
        out.append(w / w.sum())
    return out[0], out[1]


def sample_counts(step, q: np.ndarray, seed: int, n: int = SAMPLES) -> np.ndarray:
    """Counts of the tokens emitted by `step(x, rng)` over n draft tokens x ~ q."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(q.size, dtype=np.int64)
    for x in rng.choice(q.size, size=n, p=q):
        _, token = step(int(x), rng)
        counts[token] += 1
    return counts


def resample_from_target_bug(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Output of a classic bug: on rejection sample p itself instead of the residual."""
    return np.minimum(p, q) + (1 - acceptance_probability(p, q)) * p


def test_wrong_distribution_differs_enough() -> None:
    """The power check below compares against a distribution far enough from P6."""
    assert total_variation(P6, resample_from_target_bug(P6, Q6)) > 0.05


# (1) the sparse scheme is lossless when the top-K covers the vocabulary


@settings(max_examples=200, deadline=None)
@given(pairs(), st.sampled_from(TAILS))
def test_sparse_closed_form_equals_target_when_k_is_vocab(pair, tail) -> None:
    p, q = pair
    out = output_distribution_sparse(p, q, p.size, tail)
    assert np.allclose(out, p, rtol=0, atol=1e-12)
    assert topk_error(p, q, p.size, tail) <= EPS


@pytest.mark.parametrize("tail", TAILS)
def test_sparse_sampler_matches_target_when_k_is_vocab(tail) -> None:
    indices, probs = top_k(P6, P6.size)

    def step(x: int, rng: np.random.Generator) -> tuple[bool, int]:
        return sparse_step(indices, probs, Q6, x, rng, tail)

    counts = sample_counts(step, Q6, seed=1)
    assert chisquare(counts, SAMPLES * P6).pvalue > 0.01
    wrong = resample_from_target_bug(P6, Q6)
    assert chisquare(counts, SAMPLES * wrong).pvalue < 1e-6
    assert chisquare(counts, SAMPLES * Q6).pvalue < 1e-6


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("k", [2, 3, 4])
def test_sparse_sampler_matches_closed_form_below_vocab(k, tail) -> None:
    """With K < V the sampler still follows its closed form, which is then not p."""
    indices, probs = top_k(P6, k)

    def step(x: int, rng: np.random.Generator) -> tuple[bool, int]:
        return sparse_step(indices, probs, Q6, x, rng, tail)

    counts = sample_counts(step, Q6, seed=2, n=10_000)
    expected = output_distribution_sparse(P6, Q6, k, tail)
    support = expected > 0
    assert counts[~support].sum() == 0
    assert chisquare(counts[support], 10_000 * expected[support]).pvalue > 0.01
    assert chisquare(counts, 10_000 * P6).pvalue < 1e-6


# (2) the exact step is lossless


@settings(max_examples=200, deadline=None)
@given(pairs())
def test_exact_closed_form_equals_target(pair) -> None:
    p, q = pair
    assert np.allclose(output_distribution_exact(p, q), p, rtol=0, atol=1e-12)


def test_exact_sampler_matches_target() -> None:
    counts = sample_counts(lambda x, rng: exact_step(P6, Q6, x, rng), Q6, seed=3)
    assert chisquare(counts, SAMPLES * P6).pvalue > 0.01
    assert chisquare(counts, SAMPLES * resample_from_target_bug(P6, Q6)).pvalue < 1e-6


def test_exact_acceptance_rate() -> None:
    rng = np.random.default_rng(4)
    drafts = rng.choice(Q6.size, size=SAMPLES, p=Q6)
    accepted = sum(exact_step(P6, Q6, int(x), rng)[0] for x in drafts)
    beta = acceptance_probability(P6, Q6)
    assert abs(accepted / SAMPLES - beta) < 4 * np.sqrt(beta * (1 - beta) / SAMPLES)


def test_exact_step_edge_cases() -> None:
    rng = np.random.default_rng(5)
    p = np.array([0.0, 0.5, 0.5])
    q = np.array([0.5, 0.5, 0.0])
    for _ in range(200):
        assert exact_step(p, q, 1, rng) == (True, 1)
        accepted, token = exact_step(p, q, 0, rng)
        assert (accepted, token) == (False, 2)
    assert exact_step(q, q, 0, rng) == (True, 0)
    with pytest.raises(ValueError, match="probability 0"):
        exact_step(p, q, 2, rng)
    with pytest.raises(ValueError, match="sum to 1"):
        exact_step(p, q * 2, 0, rng)


# (3) the error shrinks as K grows and vanishes at K = V


@settings(max_examples=200, deadline=None)
@given(pairs(), st.sampled_from(TAILS))
def test_error_non_increasing_in_k(pair, tail) -> None:
    p, q = pair
    errors = [topk_error(p, q, k, tail) for k in range(1, p.size + 1)]
    assert all(later <= earlier + EPS for earlier, later in pairwise(errors))
    assert errors[-1] <= EPS
    assert all(0 <= e <= 1 + EPS for e in errors)


@settings(max_examples=200, deadline=None)
@given(pairs(), st.integers(min_value=1, max_value=12))
def test_error_is_tail_mass_and_draft_fill_is_no_worse(pair, k) -> None:
    p, q = pair
    k = min(k, p.size)
    tail_mass = 1 - top_k(p, k)[1].sum()
    assert abs(topk_error(p, q, k, "renormalise") - tail_mass) <= 1e-9
    assert topk_error(p, q, k, "draft") <= tail_mass + 1e-9


def test_draft_fill_error_is_tail_mass_times_tail_disagreement() -> None:
    p = np.array([0.5, 0.2, 0.2, 0.1])
    proportional_on_tail = np.array([0.1, 0.36, 0.36, 0.18])
    assert topk_error(p, proportional_on_tail, 1, "renormalise") == pytest.approx(0.5)
    assert topk_error(p, proportional_on_tail, 1, "draft") == pytest.approx(0, abs=1e-12)
    q = np.array([0.1, 0.4, 0.4, 0.1])
    # tail (2/5, 2/5, 1/5) vs (4/9, 4/9, 1/9): TV 4/45, times the tail mass 1/2
    assert topk_error(p, q, 1, "draft") == pytest.approx(0.5 * 4 / 45)


# (4) exact once the top-K holds the whole support of the target


@settings(max_examples=200, deadline=None)
@given(pairs(), st.integers(min_value=1, max_value=12), st.sampled_from(TAILS))
def test_exact_when_topk_holds_support(pair, k, tail) -> None:
    p, q = pair
    k = min(k, p.size)
    keep = np.argsort(-p, kind="stable")[:k]
    sparse_p = np.zeros_like(p)
    sparse_p[keep] = p[keep]
    sparse_p /= sparse_p.sum()
    assert np.allclose(output_distribution_sparse(sparse_p, q, k, tail), sparse_p, atol=1e-12)
    assert topk_error(sparse_p, q, k, tail) <= EPS


# the edge's reconstruction and its input checks


def test_sparse_target_fills_tail() -> None:
    q = np.array([0.1, 0.2, 0.3, 0.4])
    indices, probs = np.array([3, 0]), np.array([0.5, 0.3])
    assert np.allclose(sparse_target(indices, probs, q), [0.375, 0, 0, 0.625])
    assert np.allclose(sparse_target(indices, probs, q, "draft"), [0.3, 0.08, 0.12, 0.5])
    q_on_topk = np.array([0.5, 0, 0, 0.5])
    assert np.allclose(sparse_target(indices, probs, q_on_topk, "draft"), [0.375, 0, 0, 0.625])


def test_top_k_order_and_ties() -> None:
    indices, probs = top_k(np.array([0.2, 0.3, 0.2, 0.3]), 3)
    assert indices.tolist() == [1, 3, 0]
    assert probs.tolist() == [0.3, 0.3, 0.2]
    assert top_k(P6, 100)[0].size == P6.size


@pytest.mark.parametrize(
    ("indices", "probs", "match"),
    [
        ([0, 0], [0.2, 0.2], "distinct"),
        ([0, 9], [0.2, 0.2], "outside"),
        ([0, 1], [0.8, 0.8], r"\(0, 1\]"),
        ([0, 1], [-0.1, 0.2], "non-negative"),
        ([0], [0.2, 0.1], "equal length"),
    ],
)
def test_sparse_target_rejects_bad_input(indices, probs, match) -> None:
    with pytest.raises(ValueError, match=match):
        sparse_target(np.array(indices), np.array(probs), Q6)


def test_unknown_tail_rejected() -> None:
    with pytest.raises(ValueError, match="tail"):
        sparse_target(np.array([0]), np.array([0.4]), Q6, "zero")  # type: ignore[arg-type]


# (5) payload accounting


def test_byte_accounting() -> None:
    assert uplink_bytes_per_token() == 14
    assert full_uplink_bytes_per_token() == 5 + 32000 * 9 == 288_005
    assert full_uplink_bytes_per_token(array_header_bytes=5) == 288_010
    assert downlink_bytes_per_round(8, 5) == 5 * 8 * (5 + 9) == 560
    assert downlink_bytes_per_round(8, 5, array_header_bytes=5) == 585
    assert downlink_bytes_per_round(1, 4, index_bytes=4, prob_bytes=5) == 36

    round_ = round_bytes(4, 16)
    assert round_.uplink_sparse == 56
    assert round_.uplink_full == 1_152_020
    assert round_.downlink_topk == 5 * 16 * 14 == 1120
    assert round_.uplink_saved == 1_151_964
    assert round_.sparse_total == 1176
    assert round_.uplink_ratio == pytest.approx(1_152_020 / 56)
    assert round_.total_ratio == pytest.approx(1_152_020 / 1176)
    assert round_bytes(4, 16, bonus_position=False).downlink_topk == 4 * 16 * 14


# the synthetic model


def test_zipf_pair_shape_and_defaults() -> None:
    p, q = zipf_pair(1000, rng=np.random.default_rng(6))
    assert p.shape == q.shape == (1000,)
    assert np.all(p > 0) and np.all(q > 0)
    assert p.sum() == pytest.approx(1) and q.sum() == pytest.approx(1)
    ranks = np.arange(1, 1001)
    assert np.allclose(np.sort(p)[::-1], ranks**-1.1 / (ranks**-1.1).sum())
    assert 0 < total_variation(p, q) < 1
    same, also_same = zipf_pair(50, 2.0, np.random.default_rng(7), 0.0, tau=1.0)
    assert np.allclose(same, also_same)
