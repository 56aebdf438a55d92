"""Tests for the NAV-threshold autotuners: determinism, ranges, budget, and BO beating random."""

from __future__ import annotations

import json
import math

import pytest

from policies.pipesd.autotune import (
    Point,
    RandomThresholdTuner,
    SkoptThresholdTuner,
    ThresholdTuner,
)

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


@pytest.mark.parametrize("factory", [SkoptThresholdTuner, RandomThresholdTuner])
def test_same_seed_same_asks(factory: type) -> None:
    first, second = factory(seed=3, n_calls=8), factory(seed=3, n_calls=8)
    assert run(first) == run(second)
    assert run(factory(seed=4, n_calls=8)) != run(factory(seed=3, n_calls=8))


@pytest.mark.parametrize("factory", [SkoptThresholdTuner, RandomThresholdTuner])
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


def test_bo_beats_random_on_fixed_objective() -> None:
    bo_best, random_best = [], []
    for seed in range(10):
        bo, baseline = SkoptThresholdTuner(seed=seed), RandomThresholdTuner(seed=seed)
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


def test_ask_repeats_until_told_and_budget_is_counted() -> None:
    tuner = SkoptThresholdTuner(n_calls=3, n_initial_points=2, seed=5)
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


def test_tell_accepts_points_it_did_not_ask() -> None:
    tuner = SkoptThresholdTuner(n_calls=4, n_initial_points=2, seed=0)
    tuner.tell((0.3, 0.8), 0.2)
    assert tuner.best() == ((0.3, 0.8), 0.2)


def test_restart_starts_a_fresh_deterministic_run() -> None:
    tuner = SkoptThresholdTuner(n_calls=6, n_initial_points=3, seed=7)
    first_run = run(tuner)
    tuner.restart()
    assert not tuner.done
    assert tuner.best() is None
    second_run = run(tuner)
    assert second_run != first_run

    replay = SkoptThresholdTuner(n_calls=6, n_initial_points=3, seed=7)
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
@pytest.mark.parametrize("factory", [SkoptThresholdTuner, RandomThresholdTuner])
def test_invalid_settings(factory: type, kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_initial_points": 0}, "n_initial_points"), ({"xi": -0.1}, "xi"), ({"xi": math.inf}, "xi")],
)
def test_invalid_skopt_settings(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SkoptThresholdTuner(**kwargs)


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
