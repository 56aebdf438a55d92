"""Repeated timings on a busy machine (calibrate/noise.py): the outlier rules, the summary,
bounded re-measurement and the warning that names what stayed unstable."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calibrate.noise import (
    BEST_CASE,
    BEST_CASE_BAND,
    REMEASURE_PASSES,
    TYPICAL,
    UNSTABLE_CV,
    Repeated,
    TimingStats,
    noise_line,
    noise_notes,
    rejected_mask,
    unstable_warning,
)


def test_best_case_rule_rejects_preempted_runs_whatever_their_share() -> None:
    quiet, preempted = 2.3e-3, [5e-3, 9e-3, 20e-3]
    for slow in range(0, 6):  # up to 5 of 8 runs preempted: the median is slow
        times = [quiet * (1 + 0.01 * i) for i in range(8 - slow)] + (preempted * 2)[:slow]
        rejected = rejected_mask(times, BEST_CASE)
        assert rejected.sum() == slow
        stats = TimingStats.of(times, BEST_CASE)
        assert stats.value_s == pytest.approx(quiet) and stats.n == 8 - slow
    assert not rejected_mask([1.0, 1.0 + BEST_CASE_BAND], BEST_CASE).any()  # the band's edge


def test_typical_rule_is_median_plus_three_robust_sigma() -> None:
    times = [10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 13.0]
    median, mad = 10.0, 0.1
    rejected = rejected_mask(times, TYPICAL)
    assert rejected.tolist() == [t > median + 3 * 1.4826 * mad for t in times]
    assert rejected.tolist() == [False] * 6 + [True]
    assert not rejected_mask([1.0, 5.0], TYPICAL).any()  # too few runs to judge
    assert not rejected_mask([1.0] * 5 + [1.02], TYPICAL).any()  # 1% floor: jitter stays
    with pytest.raises(ValueError, match="statistic must be one of"):
        rejected_mask(times, "mean")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=30),
    st.sampled_from([BEST_CASE, TYPICAL]),
)
def test_stats_summarise_the_kept_runs(times: list[float], statistic: str) -> None:
    stats = TimingStats.of(times, statistic)
    kept = np.asarray(times)[~rejected_mask(times, statistic)]
    assert stats.n == kept.size >= 1 and stats.n + stats.n_rejected == len(times)
    assert stats.min_s == kept.min() and stats.max_s == kept.max()
    expected = kept.min() if statistic == BEST_CASE else np.median(kept)
    assert stats.value_s == pytest.approx(expected)
    assert math.isnan(stats.cv) == (len(times) < 2)


def test_unstable_configurations_are_remeasured_a_bounded_number_of_times() -> None:
    draws = iter([1.0, 3.0] * 100)  # every configuration alternates: never stable
    repeated: Repeated[str, float] = Repeated(["a", "b"], TYPICAL)
    calls: list[list[str]] = []

    def run_pass(keys: list[str]) -> list[str]:
        calls.append(list(keys))
        for key in keys:
            for _ in range(2):
                value = next(draws)
                repeated.add(key, value, value)
        return keys

    run_pass(["a", "b"])
    lines: list[str] = []
    repeated.remeasure(run_pass, lines.append, str)
    assert len(calls) == 1 + REMEASURE_PASSES and len(lines) == REMEASURE_PASSES
    rows = repeated.noise_rows(lambda key: {"config": key})
    assert [row["passes"] for row in rows] == [1 + REMEASURE_PASSES] * 2
    assert all(row["unstable"] and row["cv_kept"] > UNSTABLE_CV for row in rows)
    warning = unstable_warning("target forward", rows)
    assert warning is not None and warning.startswith("warning: target forward: 2 configuration")
    assert "config a" in warning and "config b" in warning and "\n" not in warning


def test_a_configuration_that_settles_stops_being_remeasured() -> None:
    repeated: Repeated[int, float] = Repeated([1], BEST_CASE)
    for value in (1.0, 3.0, 3.2):  # most runs preempted: unstable
        repeated.add(1, value, value)
    assert repeated.unstable() == [1]
    repeated.remeasure(lambda keys: [repeated.add(1, 1.01, 1.01), *keys][1:], print, str)
    assert repeated.unstable() == [] and repeated.stats(1).passes == 2
    assert repeated.kept() == [1.0, 1.01] and repeated.rejected() == [3.0, 3.2]
    rows = repeated.noise_rows(lambda key: {"tokens": key})
    assert unstable_warning("x", rows) is None
    line = noise_line(rows)
    assert line.startswith("measurement noise: CV of all runs") and "2 of 4 runs rejected" in line
    assert noise_notes("target", {"noise_forward": rows, "forward": []}) == {
        "target.noise.forward": line
    }
