"""Online cost estimators: the upload least-squares fit, averages, N̂ rounding, tolerance bands."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from policies.pipesd.estimators import (
    ExponentialAverage,
    MovingAverage,
    UploadCostEstimator,
    planning_window,
    tolerance_band,
)

costs = st.floats(0.0, 5.0, allow_nan=False)
sizes = st.integers(1, 256)


# -- UploadCostEstimator -------------------------------------------------------------------------


@given(
    alpha=costs,
    beta=costs,
    prior_alpha=costs,
    prior_beta=costs,
    batch_sizes=st.lists(sizes, min_size=2, max_size=100),
)
def test_upload_fit_recovers_exact_costs(
    alpha: float, beta: float, prior_alpha: float, prior_beta: float, batch_sizes: list[int]
) -> None:
    assume(len(set(batch_sizes)) >= 2)
    estimator = UploadCostEstimator(prior_alpha, prior_beta, window=64)
    for n in batch_sizes:
        estimator.observe(n, alpha + beta * n)
    tol = 1e-9 * (1 + alpha + 256 * beta)
    assert estimator.alpha_s == pytest.approx(alpha, abs=tol)
    assert estimator.beta_s == pytest.approx(beta, abs=tol)


def test_upload_fit_with_two_sizes_is_exact() -> None:
    estimator = UploadCostEstimator(1.0, 1.0)
    estimator.observe(1, 0.15)
    estimator.observe(3, 0.35)
    assert estimator.alpha_s == pytest.approx(0.05)
    assert estimator.beta_s == pytest.approx(0.1)


def test_upload_single_size_keeps_alpha_prior_and_solves_beta() -> None:
    estimator = UploadCostEstimator(0.05, 1.0)
    estimator.observe(4, 0.45)
    assert estimator.alpha_s == 0.05
    assert estimator.beta_s == pytest.approx(0.1)
    estimator.observe(4, 0.85)  # same size again: β from the latest measurement
    assert estimator.alpha_s == 0.05
    assert estimator.beta_s == pytest.approx(0.2)
    estimator.observe(2, 0.01)  # faster than α alone: β clamps at 0... then a real fit
    assert estimator.alpha_s >= 0.0 and estimator.beta_s >= 0.0


def test_upload_ignores_empty_batches() -> None:
    estimator = UploadCostEstimator(0.05, 0.1)
    estimator.observe(0, 10.0)
    estimator.observe(-3, 10.0)
    assert (estimator.alpha_s, estimator.beta_s) == (0.05, 0.1)


@given(
    prior_alpha=costs,
    prior_beta=costs,
    samples=st.lists(st.tuples(sizes, st.floats(0.0, 100.0)), min_size=1, max_size=150),
    window=st.integers(1, 64),
)
def test_upload_estimates_stay_non_negative(
    prior_alpha: float, prior_beta: float, samples: list[tuple[int, float]], window: int
) -> None:
    estimator = UploadCostEstimator(prior_alpha, prior_beta, window=window)
    for n, duration in samples:
        estimator.observe(n, duration)
        assert estimator.alpha_s >= 0.0
        assert estimator.beta_s >= 0.0
        assert math.isfinite(estimator.alpha_s) and math.isfinite(estimator.beta_s)


@given(
    alpha=st.floats(0.01, 1.0),
    beta=st.floats(0.05, 1.0),
    window=st.integers(3, 20),
    extra=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_upload_running_sums_match_fresh_fit_over_the_window(
    alpha: float, beta: float, window: int, extra: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    count = window + extra
    ns = rng.integers(1, 17, size=count)
    durations = alpha + beta * ns + rng.normal(0.0, 0.01, size=count)
    estimator = UploadCostEstimator(0.0, 0.0, window=window)
    for n, d in zip(ns, durations, strict=True):
        estimator.observe(int(n), float(d))
    recent_n, recent_d = ns[-window:], durations[-window:]
    assume(len(set(recent_n.tolist())) >= 2)
    slope, intercept = np.polyfit(recent_n.astype(float), recent_d, 1)
    assume(slope >= 0.0)  # the estimator clamps; compare only unconstrained fits
    expected_alpha = max((recent_d.sum() - slope * recent_n.sum()) / window, 0.0)
    assert estimator.beta_s == pytest.approx(slope, rel=1e-6, abs=1e-9)
    assert estimator.alpha_s == pytest.approx(expected_alpha, rel=1e-6, abs=1e-9)
    if intercept >= 0.0:
        assert estimator.alpha_s == pytest.approx(intercept, rel=1e-6, abs=1e-9)


def test_upload_window_forgets_old_costs() -> None:
    estimator = UploadCostEstimator(0.0, 0.0, window=8)
    for n in [1, 2, 3, 4] * 4:
        estimator.observe(n, 1.0 + 1.0 * n)
    for n in [1, 2, 3, 4] * 2:
        estimator.observe(n, 0.05 + 0.1 * n)
    assert estimator.alpha_s == pytest.approx(0.05)
    assert estimator.beta_s == pytest.approx(0.1)


# -- averages ------------------------------------------------------------------------------------


@given(
    initial=st.floats(-100, 100),
    weight=st.floats(0.001, 1.0),
    values=st.lists(st.floats(-100, 100), max_size=50),
)
def test_exponential_average_stays_within_seen_values(
    initial: float, weight: float, values: list[float]
) -> None:
    average = ExponentialAverage(initial, weight)
    low = high = initial
    for value in values:
        previous = average.value
        average.observe(value)
        low, high = min(low, value), max(high, value)
        assert low - 1e-9 <= average.value <= high + 1e-9
        assert average.value == pytest.approx(previous + weight * (value - previous))


def test_exponential_average_converges_and_weight_one_tracks() -> None:
    average = ExponentialAverage(0.0, 0.25)
    for _ in range(200):
        average.observe(3.0)
    assert average.value == pytest.approx(3.0)
    tracking = ExponentialAverage(5.0, 1.0)
    tracking.observe(2.0)
    assert tracking.value == 2.0
    assert ExponentialAverage(0.7, 0.1).value == 0.7


@given(
    initial=st.floats(-100, 100),
    window=st.integers(1, 10),
    values=st.lists(st.floats(-100, 100), max_size=40),
)
def test_moving_average_is_mean_of_last_window(
    initial: float, window: int, values: list[float]
) -> None:
    average = MovingAverage(initial, window)
    assert average.value == initial
    for i, value in enumerate(values):
        average.observe(value)
        recent = values[max(0, i + 1 - window) : i + 1]
        assert average.value == pytest.approx(sum(recent) / len(recent), abs=1e-9)


# -- planning window and tolerance band ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "cap", "expected"),
    [
        (3.0, 64, 3),
        (3.0 + 1e-12, 64, 3),
        (3.01, 64, 4),
        (2.5, 64, 3),
        (0.2, 64, 1),
        (0.0, 64, 1),
        (-5.0, 64, 1),
        (64.0, 64, 64),
        (100.0, 64, 64),
        (7.5, 5, 5),
        (1.0, 1, 1),
    ],
)
def test_planning_window_rounds_up_within_caps(mean: float, cap: int, expected: int) -> None:
    result = planning_window(mean, cap)
    assert result == expected
    assert isinstance(result, int)


@given(mean=st.floats(0.0, 1000.0), cap=st.integers(1, 256))
def test_planning_window_bounds(mean: float, cap: int) -> None:
    window = planning_window(mean, cap)
    assert 1 <= window <= cap
    if 1 <= math.ceil(mean) <= cap:
        assert window >= mean - 1e-9
        assert window - 1 < mean


@given(value=st.floats(-1e6, 1e6), tolerance=st.floats(0.0, 10.0))
def test_tolerance_band_is_symmetric_and_relative(value: float, tolerance: float) -> None:
    low, high = tolerance_band(value, tolerance)
    assert low <= value <= high
    rounding = 4 * math.ulp(abs(value)) + 1e-300  # the band's ends are rounded floats
    assert high - value == pytest.approx(value - low, rel=1e-9, abs=rounding)
    assert high - low == pytest.approx(2 * tolerance * abs(value), rel=1e-9, abs=2 * rounding)


def test_tolerance_band_examples() -> None:
    assert tolerance_band(0.1, 0.2) == pytest.approx((0.08, 0.12))
    assert tolerance_band(-2.0, 0.5) == pytest.approx((-3.0, -1.0))
    assert tolerance_band(0.0, 0.2) == (0.0, 0.0)
