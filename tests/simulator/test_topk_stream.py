"""The acceptance stream's top-K adjustment (PicoSpec verifying against a top-K downlink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.picospec.topk_acceptance import TopKEffect
from simulator.acceptance import AcceptanceModel, topk_effect_from_trace, with_topk
from simulator.errors import ConfigError
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


REPO = Path(__file__).resolve().parents[2]
TRACE = REPO / "scenarios" / "acceptance" / "smollm2-q4_0.reference.heldout.csv.gz"


def test_effect_from_the_shipped_top32_trace() -> None:
    """Tail mass (the distribution error) falls with K; K = 1 loses acceptance."""
    effects = [topk_effect_from_trace(TRACE, k) for k in (1, 4, 16, 32)]
    tv = [e.tv_error for e in effects]
    assert tv == sorted(tv, reverse=True) and 0 < tv[-1] < tv[0] < 1
    assert effects[0].retention < 1
    with pytest.raises(ConfigError, match="top_ids"):
        topk_effect_from_trace(TRACE, 33)


def test_trace_without_topk_columns_is_one_line_error(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("sequence,position,confidence,accepted\n0,0,0.5,1\n")
    with pytest.raises(ConfigError, match="no top-K columns"):
        topk_effect_from_trace(trace, 4)
