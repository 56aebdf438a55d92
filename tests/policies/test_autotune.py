"""Tests for the NAV-threshold autotuners: determinism, ranges, budget, BO beating random, and
the numpy GP's incremental posterior against a direct computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from policies.pipesd.autotune import (
    GpThresholdTuner,
    Point,
    RandomThresholdTuner,
    SkoptThresholdTuner,
    ThresholdTuner,
    threshold_tuner,
)
from policies.pipesd.gp import (
    LENGTH_SCALES,
    CandidatePosterior,
    Hyperparameters,
    fit_hyperparameters,
    matern52,
    normalise,
)
from policies.pipesd.policy import PipeSD, PipeSDParams

BO_TUNERS = [GpThresholdTuner, SkoptThresholdTuner]
ALL_TUNERS = [*BO_TUNERS, RandomThresholdTuner]

R1_RANGE = (0.05, 0.9)
R2_RANGE = (0.6, 0.99)


def bowl(point: Point) -> float:
    """Seconds per token-like objective: a tilted bowl with its one minimum near (0.42, 0.86).

    The sine's curvature (at most 0.002·106) stays below the bowl's (0.4), so the sum is convex
    and has a single interior minimum.
    """
    r1, r2 = point
    return (
        0.08 + 0.2 * (r1 - 0.42) ** 2 + 0.6 * (r2 - 0.86) ** 2 + 0.002 * math.sin(9 * r1 + 5 * r2)
    )


def run(tuner: ThresholdTuner) -> list[Point]:
    """Spend the tuner's budget on `bowl`; return every point asked."""
    asked = []
    while not tuner.done:
        point = tuner.ask()
        asked.append(point)
        tuner.tell(point, bowl(point))
    return asked


def in_ranges(point: Point) -> bool:
    return R1_RANGE[0] <= point[0] <= R1_RANGE[1] and R2_RANGE[0] <= point[1] <= R2_RANGE[1]


@pytest.mark.parametrize("factory", ALL_TUNERS)
def test_same_seed_same_asks(factory: type) -> None:
    first, second = factory(seed=3, n_calls=8), factory(seed=3, n_calls=8)
    assert run(first) == run(second)
    assert run(factory(seed=4, n_calls=8)) != run(factory(seed=3, n_calls=8))


@pytest.mark.parametrize("factory", ALL_TUNERS)
def test_asks_lie_in_ranges_and_are_plain_floats(factory: type) -> None:
    tuner = factory(seed=1, n_calls=10)
    asked = run(tuner)
    assert len(asked) == 10
    best = tuner.best()
    assert best is not None
    for point in [*asked, best[0], tuner.ask()]:
        assert in_ranges(point)
        assert all(type(value) is float for value in point)
    assert type(best[1]) is float
    json.dumps({"asked": asked, "best": best, "next": tuner.ask()})


@pytest.mark.parametrize("factory", BO_TUNERS)
def test_bo_beats_random_on_fixed_objective(factory: type) -> None:
    bo_best, random_best = [], []
    for seed in range(10):
        bo, baseline = factory(seed=seed), RandomThresholdTuner(seed=seed)
        run(bo)
        run(baseline)
        bo_best.append(_best_value(bo))
        random_best.append(_best_value(baseline))
    wins = sum(bo < rnd for bo, rnd in zip(bo_best, random_best, strict=True))
    assert sum(bo_best) < sum(random_best)
    assert wins > len(bo_best) / 2


def _best_value(tuner: ThresholdTuner) -> float:
    best = tuner.best()
    assert best is not None
    return best[1]


@pytest.mark.parametrize("factory", BO_TUNERS)
def test_ask_repeats_until_told_and_budget_is_counted(factory: type) -> None:
    tuner = factory(n_calls=3, n_initial_points=2, seed=5)
    assert tuner.best() is None
    first = tuner.ask()
    assert tuner.ask() == first
    tuner.tell(first, 0.5)
    assert not tuner.done
    run(tuner)
    assert tuner.done
    with pytest.raises(RuntimeError, match="restart"):
        tuner.tell(first, 0.1)


def test_done_tuner_keeps_asking_the_best_point() -> None:
    tuner = RandomThresholdTuner(n_calls=4, seed=2)
    objectives = iter([0.3, 0.1, 0.2, 0.4])
    told = []
    while not tuner.done:
        point = tuner.ask()
        told.append(point)
        tuner.tell(point, next(objectives))
    assert tuner.best() == (told[1], 0.1)
    assert tuner.ask() == told[1]


@pytest.mark.parametrize("factory", BO_TUNERS)
def test_tell_accepts_points_it_did_not_ask(factory: type) -> None:
    tuner = factory(n_calls=4, n_initial_points=2, seed=0)
    tuner.tell((0.3, 0.8), 0.2)
    assert tuner.best() == ((0.3, 0.8), 0.2)


@pytest.mark.parametrize("factory", BO_TUNERS)
def test_restart_starts_a_fresh_deterministic_run(factory: type) -> None:
    tuner = factory(n_calls=6, n_initial_points=3, seed=7)
    first_run = run(tuner)
    tuner.restart()
    assert not tuner.done
    assert tuner.best() is None
    second_run = run(tuner)
    assert second_run != first_run

    replay = factory(n_calls=6, n_initial_points=3, seed=7)
    run(replay)
    replay.restart()
    assert run(replay) == second_run


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"r1_range": (0.0, 0.5)}, "r1_range"),
        ({"r1_range": (0.5, 0.5)}, "r1_range"),
        ({"r2_range": (0.6, 1.01)}, "r2_range"),
        ({"r2_range": (0.9, 0.6)}, "r2_range"),
        ({"r2_range": (0.6,)}, "r2_range"),
        ({"r1_range": (0.1, math.nan)}, "r1_range"),
        ({"n_calls": 0}, "n_calls"),
        ({"n_calls": 2.0}, "n_calls"),
        ({"seed": -1}, "seed"),
    ],
)
@pytest.mark.parametrize("factory", ALL_TUNERS)
def test_invalid_settings(factory: type, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_initial_points": 0}, "n_initial_points"), ({"xi": -0.1}, "xi"), ({"xi": math.inf}, "xi")],
)
@pytest.mark.parametrize("factory", BO_TUNERS)
def test_invalid_bo_settings(factory: type, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name", [({"refit_every": 0}, "refit_every"), ({"n_candidates": 0}, "n_candidates")]
)
def test_invalid_gp_settings(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GpThresholdTuner(**kwargs)


@pytest.mark.parametrize(
    "point, objective, name",
    [
        ((0.01, 0.8), 0.1, "r1"),
        ((0.3, 1.0), 0.1, "r2"),
        ((0.3,), 0.1, "point"),
        ((0.3, 0.8), math.nan, "objective"),
        ((0.3, 0.8), math.inf, "objective"),
    ],
)
def test_invalid_tell(point: Point, objective: float, name: str) -> None:
    tuner = RandomThresholdTuner()
    with pytest.raises(ValueError, match=name):
        tuner.tell(point, objective)
    assert tuner.best() is None


# ---------------------------------------------------------------------------------------------
# The numpy GP


def direct_posterior(
    hyper: Hyperparameters, x: np.ndarray, y: np.ndarray, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The textbook posterior (one dense solve, no Cholesky updates) in the objective's units."""
    y_norm, mean, std = normalise(y)
    k = hyper.amplitude * matern52(x, x, hyper.length_scales)
    k += (hyper.noise + 1e-10) * np.eye(len(x))
    k_star = hyper.amplitude * matern52(x, at, hyper.length_scales)
    mu = k_star.T @ np.linalg.solve(k, y_norm)
    var = hyper.amplitude - np.einsum("ij,ij->j", k_star, np.linalg.solve(k, k_star))
    return mean + std * mu, std * np.sqrt(np.maximum(var, 0.0))


def test_incremental_posterior_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.random((200, 2))
    x = rng.random((14, 2))
    x[7] = x[3]  # a repeated point (noisy objective measured twice)
    y = np.array([bowl((0.05 + 0.85 * a, 0.6 + 0.39 * b)) for a, b in x])
    y[7] += 0.003
    hyper = Hyperparameters(length_scales=(0.3, 0.7), amplitude=1.3, noise=1e-3)
    incremental = CandidatePosterior(candidates, hyper)
    for i in range(len(x)):
        incremental.add(x[i], float(y[i]))
        mu, sigma = incremental.predict()
        want_mu, want_sigma = direct_posterior(hyper, x[: i + 1], y[: i + 1], candidates)
        np.testing.assert_allclose(mu, want_mu, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sigma, want_sigma, rtol=1e-6, atol=1e-9)
    batch = CandidatePosterior.build(candidates, hyper, x, y)
    np.testing.assert_allclose(batch.predict()[0], incremental.predict()[0], rtol=1e-9)
    np.testing.assert_allclose(batch.predict()[1], incremental.predict()[1], rtol=1e-6, atol=1e-9)


def test_tuner_posterior_matches_direct_computation_between_refits() -> None:
    tuner = GpThresholdTuner(seed=11, refit_every=4, n_candidates=300)
    fitted = []
    while not tuner.done:
        point = tuner.ask()
        tuner.tell(point, bowl(point))
        posterior = tuner.posterior
        if posterior is None:
            continue
        fitted.append(posterior.hyper)
        mu, sigma = posterior.predict()
        want_mu, want_sigma = direct_posterior(
            posterior.hyper, posterior.x, posterior.y, posterior.candidates
        )
        np.testing.assert_allclose(mu, want_mu, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sigma, want_sigma, rtol=1e-6, atol=1e-9)
    # hyper-parameters fitted at 5 observations, then re-fitted at 9 and 13 only
    assert len(fitted) == 12
    assert fitted[0] == fitted[3] and fitted[4] == fitted[7] and fitted[8] == fitted[11]


def test_hyperparameter_fit_finds_the_irrelevant_input() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((14, 2))
    y = np.sin(6.0 * x[:, 0])
    hyper = fit_hyperparameters(x, normalise(y)[0])
    assert hyper.length_scales[1] == LENGTH_SCALES[-1]
    assert hyper.length_scales[0] < 1.0
    assert hyper.noise < 0.01 * hyper.amplitude


def test_expected_improvement_prefers_the_unexplored_or_promising() -> None:
    hyper = Hyperparameters(length_scales=(0.2, 0.2), amplitude=1.0, noise=1e-6)
    candidates = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    posterior = CandidatePosterior(candidates, hyper)
    for point, value in [((0.1, 0.1), 1.0), ((0.5, 0.5), 0.2), ((0.45, 0.5), 0.3)]:
        posterior.add(np.array(point), value)
    ei = posterior.expected_improvement(xi=0.0)
    assert ei[0] < 1e-6  # observed, and the worst
    assert ei[2] > ei[0]  # unexplored: uncertain, so it may improve
    assert np.all(ei >= 0.0)


def test_policy_uses_the_configured_backend() -> None:
    for backend, expected in (("gp", GpThresholdTuner), ("skopt", SkoptThresholdTuner)):
        policy = PipeSD(PipeSDParams(tune_backend=backend), seed=3)
        assert policy.autotuner is not None
        assert type(policy.autotuner.tuner) is expected
    assert type(threshold_tuner("gp", seed=1)) is GpThresholdTuner
    with pytest.raises(ValueError, match="backend"):
        threshold_tuner("optuna")  # type: ignore[arg-type]
