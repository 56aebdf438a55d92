"""The acceptance stream's top-K adjustment (PicoSpec verifying against a top-K downlink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.picospec.topk_acceptance import TopKEffect
from simulator.acceptance import AcceptanceModel, with_topk
from simulator.profile import ConstantConfidence, IIDAcceptance

MODEL = AcceptanceModel(
    IIDAcceptance(kind="iid", rate=0.8, confidence=ConstantConfidence(kind="constant", value=0.9)),
    Path("."),
)


def test_without_topk_the_stream_is_unchanged() -> None:
    a, b = MODEL.stream(1, 0, 3, 500), MODEL.stream(1, 0, 3, 500, None)
    assert np.array_equal(a.accepted, b.accepted) and a.next_reject == b.next_reject


def test_thinning_and_filling_reach_the_topk_rate_and_keep_common_verdicts() -> None:
    base = MODEL.stream(2, 0, 0, 20_000).accepted
    lower = MODEL.stream(2, 0, 0, 20_000, TopKEffect(1, 0.8, 0.6, 0.3)).accepted
    higher = MODEL.stream(2, 0, 0, 20_000, TopKEffect(8, 0.8, 0.9, 0.05)).accepted
    assert abs(lower.mean() - 0.6) < 0.02 and not np.any(lower & ~base)  # only thinned
    assert abs(higher.mean() - 0.9) < 0.02 and not np.any(base & ~higher)  # only filled
    stream = MODEL.stream(2, 0, 0, 50, TopKEffect(1, 0.8, 0.6, 0.3))
    n = len(stream.accepted)
    for p in range(n):
        rejected = [q for q in range(p, n) if not stream.accepted[q]]
        assert stream.next_reject[p] == (rejected[0] if rejected else n)


def test_with_topk_edge_rates() -> None:
    rng = np.random.default_rng(0)
    ones = np.ones(100, dtype=bool)
    assert with_topk(ones, TopKEffect(4, 0.7, 0.7, 0.1), rng).all()
    assert not with_topk(ones, TopKEffect(1, 0.7, 0.0, 0.5), rng).any()
    assert with_topk(~ones, TopKEffect(4, 0.5, 1.0, 0.0), rng).all()
