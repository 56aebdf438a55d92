"""Enough requests to rank (validation/ranking.py): the paired t-test's sample size against a
direct simulation of the test, the pairs a pilot plans, and what a run found of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from pipesd.cli import main
from validation.ranking import (
    PairPlan,
    paired_power,
    paired_sample_size,
    plan_outcome,
    plan_pairs,
    requests_per_point,
    seeds_for,
    simulated_tpts,
)
from validation.validate import validation_points

REPO = Path(__file__).resolve().parents[2]


def simulated_rejection_rate(gap: float, spread: float, n: int, trials: int, seed: int) -> float:
    """How often a two-sided paired t-test at 95% rejects "no gap" over `n` pairs whose
    differences are normal (gap, spread): the test itself, run `trials` times."""
    rng = np.random.default_rng(seed)
    differences = rng.normal(gap, spread, size=(trials, n))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / np.sqrt(n))
    return float(np.mean(np.abs(t) > student_t.ppf(0.975, n - 1)))


@pytest.mark.parametrize(("gap", "spread"), [(1.0, 3.0), (2.4, 3.1), (1.07, 4.9), (5.0, 2.0)])
def test_sample_size_matches_a_direct_simulation_of_the_paired_t_test(gap, spread) -> None:
    n = paired_sample_size(gap, spread)
    assert n is not None and n >= 2
    trials = 20_000
    at_n = simulated_rejection_rate(gap, spread, n, trials, seed=n)
    assert at_n == pytest.approx(paired_power(gap, spread, n), abs=0.015)  # 3 standard errors
    assert at_n >= 0.8 - 0.015
    if n > 2:
        fewer = simulated_rejection_rate(gap, spread, n - 1, trials, seed=n + 1)
        assert paired_power(gap, spread, n - 1) < 0.8 and fewer < 0.8 + 0.015


def test_sample_size_edges() -> None:
    assert paired_sample_size(0.0, 1.0) is None  # nothing to separate
    assert paired_sample_size(1.0, 0.0) == 2  # no spread: any two pairs do
    assert paired_sample_size(0.01, 100.0, max_n=1000) is None  # beyond the cap
    assert paired_sample_size(-1.0, 3.0) == paired_sample_size(1.0, 3.0)  # either order
    assert seeds_for(66, 4) == list(range(1, 18)) and seeds_for(0, 4) == [1]


def tpts(values: dict[str, list[float]]) -> dict[tuple[int, str], dict[tuple[int, int], float]]:
    return {(0, label): {(1, i): v for i, v in enumerate(vs)} for label, vs in values.items()}


def test_plan_pairs_keeps_pairs_more_than_3_percent_apart_and_their_spread() -> None:
    base = [30.0, 34.0, 29.0, 40.0, 31.0, 33.0]
    simulated = tpts({
        "a": base,
        "b": [v * 1.10 for v in base],  # 10% slower than a
        "c": [v * 1.01 for v in base],  # 1%: not worth separating
    })  # fmt: skip
    plans = plan_pairs(simulated)
    assert {(p.faster, p.slower) for p in plans} == {("a", "b"), ("c", "b")}
    ab = next(p for p in plans if p.faster == "a")
    gaps = np.array(base) * 0.10
    assert ab.gap_ms == pytest.approx(gaps.mean()) and ab.spread_from == "simulator"
    assert ab.spread_ms == pytest.approx(gaps.std(ddof=1))
    assert ab.requests == paired_sample_size(gaps.mean(), gaps.std(ddof=1))
    noisy = tpts({"a": [30.0, 31.0, 29.0, 30.0], "b": [33.0, 30.0, 36.0, 31.0]})
    with_real = plan_pairs(simulated, noisy)
    ab_real = next(p for p in with_real if p.faster == "a")
    assert ab_real.spread_from == "recorded run"
    assert ab_real.spread_ms == pytest.approx(np.std([3.0, -1.0, 7.0, 1.0], ddof=1))
    assert ab_real.requests > ab.requests
    assert requests_per_point(with_real, 10_000) == max(p.requests for p in with_real)
    assert requests_per_point([], 50) == 0


def test_plan_outcome_says_how_the_real_run_ordered_each_pair() -> None:
    plans = [PairPlan(0, "a", "b", 2.0, 0.06, 3.0, "simulator", 20),
             PairPlan(0, "a", "c", 2.0, 0.06, 3.0, "simulator", 20),
             PairPlan(1, "a", "b", 2.0, 0.06, 3.0, "simulator", 20)]  # fmt: skip
    found = {0: [("a", "b", 1.5, 1.0), ("c", "a", 0.8, 0.5)]}
    outcome = plan_outcome(plans, found)
    verdicts = [o["real"] for o in outcome]
    assert outcome[1]["real_gap_ms"] == 0.8 and outcome[2]["real_gap_ms"] is None  # JSON null
    assert verdicts == [
        "separated, the simulator's order",
        "separated, the other way",
        "not separated",
    ]


def test_the_simulated_pilot_of_the_cpu_testbed_plans_its_pairs() -> None:
    points = validation_points(
        REPO / "scenarios" / "testbed_cpu.toml",
        REPO / "docs" / "validation" / "cpu-run15" / "calibration" / "profile.json",
        [],
        [],
    )
    pilot = simulated_tpts(points, seeds=(1, 2))
    assert len(pilot) == 12 and all(len(runs) == 8 for runs in pilot.values())
    plans = plan_pairs(pilot)
    assert plans and all(p.relative_gap > 0.03 and p.requests for p in plans)


def test_pilot_flags_need_rank(write_scenario, tmp_path, capsys) -> None:
    scenario = write_scenario()
    argv = ["validate", str(scenario), "--profile", str(tmp_path / "profile.json"),
            "--target", "smollm2-135m", "--draft", "smollm2-135m", "--pilot-from",
            str(tmp_path), "--out", str(tmp_path / "v")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pilot-from" in err and "only with --rank" in err
    assert main([*argv[:-2], "--rank", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no real/results.csv" in err
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "results.csv").write_text("point,policy\n0,a\n")
    assert main([*argv[:-2], "--rank", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a results.csv" in err
    assert not (tmp_path / "v").exists()
