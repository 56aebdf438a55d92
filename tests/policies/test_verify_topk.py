"""PicoSpec's edge-side sampler from sparse inputs (`verify_topk`) and the top-K trace model."""

from __future__ import annotations

import numpy as np
import pytest
from chi_square import chi2_pvalue

from policies.picospec.sparse_verify import (
    output_distribution_sparse,
    sparse_target,
    top_k,
    verify_topk,
    zipf_pair,
)
from policies.picospec.topk_acceptance import topk_effect, topk_position

SAMPLES = 20_000


def _sparse_draft(q: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The draft as the edge holds it: its `keep` largest entries, renormalised."""
    ids, probs = top_k(q, keep)
    return ids, probs / probs.sum()


@pytest.mark.parametrize(("k", "keep"), [(8, 40), (3, 200), (2, 10)])
def test_sampler_output_matches_rebuilt_target(k: int, keep: int) -> None:
    """Chi-square: tokens emitted for x ~ q follow the renormalised top-K target p̃."""
    p, q_full = zipf_pair(200, exponent=1.3, rng=np.random.default_rng(7))
    q_ids, q_probs = _sparse_draft(q_full, keep)
    t_ids, t_probs = top_k(p, k)
    rebuilt = np.zeros(200)
    rebuilt[t_ids] = t_probs / t_probs.sum()
    rng = np.random.default_rng(11)
    drafts = rng.choice(q_ids, size=SAMPLES, p=q_probs)
    out = np.array([verify_topk(t_ids, t_probs, q_ids, q_probs, int(x), rng)[1] for x in drafts])
    assert chi2_pvalue(out, rebuilt) > 1e-3
    assert set(out.tolist()) <= set(t_ids.tolist())  # nothing outside the top-K
    q_dense = np.zeros(200)
    q_dense[q_ids] = q_probs
    assert np.allclose(output_distribution_sparse(p, q_dense, k), rebuilt)


def test_top_1_always_emits_the_target_argmax() -> None:
    p, q = zipf_pair(30, exponent=1.3, rng=np.random.default_rng(8))
    t_ids, t_probs = top_k(p, 1)
    rng = np.random.default_rng(6)
    ids = np.arange(30)
    outs = {verify_topk(t_ids, t_probs, ids, q, int(x), rng)[1] for x in rng.choice(30, 500, p=q)}
    assert outs == {int(t_ids[0])}


def test_sampler_detects_a_wrong_target() -> None:
    """The same test rejects the sampler's output against the unrenormalised target p."""
    p, q = zipf_pair(50, exponent=1.3, rng=np.random.default_rng(3))
    t_ids, t_probs = top_k(p, 4)
    rng = np.random.default_rng(5)
    ids = np.arange(50)
    drafts = rng.choice(50, size=SAMPLES, p=q)
    out = np.array([verify_topk(t_ids, t_probs, ids, q, int(x), rng)[1] for x in drafts])
    assert chi2_pvalue(out, p) < 1e-6


def test_acceptance_rate_matches_closed_form() -> None:
    """The accept rate is Σ min(p̃, q), as the simulator's trace model assumes."""
    p, q = zipf_pair(60, exponent=1.2, rng=np.random.default_rng(9))
    t_ids, t_probs = top_k(p, 6)
    rebuilt = sparse_target(t_ids, t_probs, q)
    rng = np.random.default_rng(1)
    ids = np.arange(60)
    drafts = rng.choice(60, size=SAMPLES, p=q)
    accepted = [verify_topk(t_ids, t_probs, ids, q, int(x), rng)[0] for x in drafts]
    expected = float(np.minimum(rebuilt, q).sum())
    assert abs(np.mean(accepted) - expected) < 4 * np.sqrt(expected * (1 - expected) / SAMPLES)


def test_bad_inputs_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="draft probability 0"):
        verify_topk([0, 1], [0.5, 0.3], [0, 1], [0.5, 0.5], 2, rng)
    with pytest.raises(ValueError, match="sum to 1"):
        verify_topk([0, 1], [0.5, 0.3], [0, 1], [0.5, 0.4], 0, rng)
    with pytest.raises(ValueError, match="distinct"):
        verify_topk([0, 0], [0.5, 0.3], [0, 1], [0.5, 0.5], 0, rng)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        verify_topk([0, 1], [0.7, 0.6], [0, 1], [0.5, 0.5], 0, rng)


def test_topk_position_against_closed_form() -> None:
    """Per position: acceptance of x is min(1, p̃(x)/q(x)), 0 outside, and TV = 1 - S_K."""
    ids, probs = [5, 2, 9], [0.5, 0.3, 0.1]
    assert topk_position(2, 0.2, ids, probs, 2) == pytest.approx((1.0, 0.2))
    assert topk_position(2, 0.6, ids, probs, 2) == pytest.approx((0.3 / 0.8 / 0.6, 0.2))
    assert topk_position(9, 0.05, ids, probs, 2) == pytest.approx((0.0, 0.2))
    with pytest.raises(ValueError, match="recorded top-K"):
        topk_position(5, 0.5, ids, probs, 4)


def test_topk_effect_matches_full_distributions() -> None:
    """Averaged over draws x ~ q, the trace model gives Σ min(p̃, q) and TV(p, p̃)."""
    p, q = zipf_pair(40, exponent=1.2, rng=np.random.default_rng(2))
    order = np.argsort(-p, kind="stable")
    rng = np.random.default_rng(4)
    xs = rng.choice(40, size=4000, p=q)
    effect = topk_effect(
        xs.tolist(),
        q[xs].tolist(),
        np.minimum(1.0, p[xs] / q[xs]).tolist(),
        [order.tolist()] * xs.size,
        [p[order].tolist()] * xs.size,
        5,
    )
    rebuilt = sparse_target(*top_k(p, 5), q)
    assert effect.topk_acceptance == pytest.approx(np.minimum(rebuilt, q).sum(), abs=0.03)
    assert effect.exact_acceptance == pytest.approx(np.minimum(p, q).sum(), abs=0.03)
    assert effect.tv_error == pytest.approx(1.0 - p[order[:5]].sum())
