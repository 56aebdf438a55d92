"""The acceptance stream's top-K adjustment (PicoSpec verifying against a top-K downlink)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policies.picospec.topk_acceptance import TopKEffect
from simulator.acceptance import AcceptanceModel, topk_effect_from_trace, with_topk
from simulator.acceptance_spec import ConstantConfidence, IIDAcceptance
from simulator.engine import simulate
from simulator.errors import ConfigError
from simulator.scenario import expand_sweep

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


POLICIES = (
    '\n[[policies]]\nname = "picospec"\npayload = { kind = "token_prob", downlink_top_k = 1 }\n'
    '\n[[policies]]\nname = "picospec"\nlabel = "exact-p"\npayload = { kind = "token_prob", '
    'downlink_top_k = 1, downlink_scheme = "exact_p_then_topk" }\n'
)


def _scenario(write_scenario, **changes):
    """The first point of a scenario running vanilla and both PicoSpec downlink schemes."""
    path = write_scenario(policies=[{"name": "vanilla"}], **changes)
    path.write_text(path.read_text() + POLICIES)
    return expand_sweep(path)[0].scenario


def test_profile_topk_trace_changes_picospec_and_reports_the_error(write_scenario) -> None:
    """With the profile's topk_trace, a top-K downlink changes acceptance and reports the TV
    error; the exact-p(x) variant and Vanilla are untouched."""
    plain = _scenario(write_scenario)  # read before the next call rewrites profile.json
    traced = _scenario(write_scenario, profile_changes={"topk_trace": str(TRACE)})
    result = simulate(traced, traced.policies[1], 1)
    expected = topk_effect_from_trace(TRACE, 1)
    assert result.policy_state["topk_tv_error"] == pytest.approx(expected.tv_error)
    assert result.records != simulate(plain, plain.policies[1], 1).records
    for index in (0, 2):
        run = simulate(traced, traced.policies[index], 1)
        assert "topk_tv_error" not in run.policy_state
        assert run.records == simulate(plain, plain.policies[index], 1).records


def test_missing_trace_or_too_large_k_is_a_config_error(write_scenario) -> None:
    missing = _scenario(write_scenario, profile_changes={"topk_trace": "missing.csv.gz"})
    with pytest.raises(ConfigError, match=r"missing\.csv\.gz"):
        simulate(missing, missing.policies[1], 1)
    path = write_scenario(
        policies=[{"name": "vanilla"}], profile_changes={"topk_trace": str(TRACE)}
    )
    path.write_text(
        path.read_text()
        + '\n[[policies]]\nname = "picospec"\n'
        + 'payload = { kind = "token_prob", downlink_top_k = 64 }\n'
    )
    wide = expand_sweep(path)[0].scenario
    with pytest.raises(ConfigError, match="top-64"):
        simulate(wide, wide.policies[1], 1)
