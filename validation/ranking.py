"""Enough requests to rank (issue 19): how many requests per sweep point a validation run needs
so that a paired t-test at 95% separates the policy pairs the simulator says differ by more
than 3%.

A pilot gives, per pair, the mean TPT gap (from the simulator: the pairs worth separating are
those it predicts apart) and the spread of the per-request gaps (the simulator's own, or a
recorded real run's, which also holds the machine's noise). For a true mean gap d and spread s
the paired t statistic over n requests is noncentral t with n - 1 degrees of freedom and
noncentrality d sqrt(n) / s; the run needs the least n whose test rejects "no gap" with the
given power (`paired_sample_size`, checked against a direct simulation of the test).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import nct
from scipy.stats import t as student_t

from simulator.runner import Task, execute, request_rows
from simulator.scenario import SweepPoint

MIN_GAP = 0.03
"""Pairs the simulator puts more than this apart (relative to the faster) must be separated."""

POWER = 0.8
"""Probability with which a run of the planned size separates such a pair."""

PILOT_SEEDS = tuple(range(1, 9))
"""Seeds of the simulated pilot (the simulator is cheap: 8 seeds x the scenario's requests)."""

Tpts = dict[tuple[int, str], dict[tuple[int, int], float]]
"""TPT (ms) per (point, policy), per (seed, request)."""


def paired_power(gap: float, spread: float, n: int, confidence: float = 0.95) -> float:
    """Probability that a two-sided paired t-test over `n` pairs rejects "no gap" at
    `confidence` when the per-pair differences have mean `gap` and standard deviation
    `spread` (noncentral t)."""
    if n < 2:
        return 0.0
    if spread <= 0.0:
        return 1.0 if gap != 0.0 else 0.0
    df = n - 1
    critical = student_t.ppf(0.5 + confidence / 2, df)
    shift = abs(gap) * math.sqrt(n) / spread
    return float(nct.sf(critical, df, shift) + nct.cdf(-critical, df, shift))


def paired_sample_size(
    gap: float, spread: float, confidence: float = 0.95, power: float = POWER, max_n: int = 100_000
) -> int | None:
    """The least n >= 2 of pairs for which `paired_power` reaches `power`; None beyond `max_n`
    (or for no gap)."""
    if gap == 0.0:
        return None
    if paired_power(gap, spread, max_n, confidence) < power:
        return None
    low, high = 1, 2  # power grows with n: double, then bisect
    while paired_power(gap, spread, high, confidence) < power:
        low, high = high, min(2 * high, max_n)
    while high - low > 1:
        middle = (low + high) // 2
        if paired_power(gap, spread, middle, confidence) >= power:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class PairPlan:
    """A policy pair at a sweep point the simulator puts apart, and the requests it needs."""

    point: int
    faster: str
    slower: str
    gap_ms: float
    """The simulator's mean TPT gap (slower - faster) over the pilot's requests."""
    relative_gap: float
    spread_ms: float
    """Standard deviation of the per-request gaps (from `spread_from`)."""
    spread_from: str
    requests: int | None
    """Requests per point for a paired t-test at 95% to separate it with `POWER` (None: more
    than the cap)."""


def simulated_tpts(
    points: Sequence[SweepPoint], seeds: Sequence[int] = PILOT_SEEDS, skip: Sequence[str] = ()
) -> Tpts:
    """The simulated pilot: every policy of every point but those in `skip` (the testbed
    cannot run them) with `seeds`, TPT per request."""
    tpts: Tpts = {}
    for point in points:
        for position, entry in enumerate(point.scenario.policies):
            if entry.label in skip:
                continue
            for seed in seeds:
                task = Task(point, position, seed)
                for row in request_rows(task, execute((task, False))):
                    value = float(row["tpt_ms"])
                    if math.isfinite(value):
                        key = (point.index, entry.label)
                        tpts.setdefault(key, {})[(seed, int(row["request"]))] = value
    return tpts


def recorded_tpts(results: Path) -> Tpts:
    """TPT per request from a results.csv (a recorded real run: a real pilot); ValueError
    without its columns."""
    tpts: Tpts = {}
    with results.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"point", "policy", "seed", "request", "tpt_ms"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        for row in reader:
            value = float(row["tpt_ms"]) if row.get("tpt_ms") else math.nan
            if math.isfinite(value):
                key = (int(row["point"]), row["policy"])
                tpts.setdefault(key, {})[(int(row["seed"]), int(row["request"]))] = value
    return tpts


def _gaps(tpts: Tpts, point: int, a: str, b: str) -> np.ndarray:
    """Per-request TPT differences a - b over the requests both ran."""
    a_runs, b_runs = tpts.get((point, a), {}), tpts.get((point, b), {})
    shared = sorted(set(a_runs) & set(b_runs))
    return np.array([a_runs[k] - b_runs[k] for k in shared], dtype=float)


def plan_pairs(
    simulated: Tpts,
    spread_source: Tpts | None = None,
    min_gap: float = MIN_GAP,
    power: float = POWER,
    max_requests: int = 100_000,
) -> list[PairPlan]:
    """Every pair the simulated pilot puts more than `min_gap` apart, with the requests per
    point that separate it. The spread of the per-request gaps comes from `spread_source` (a
    recorded real run) where it has at least 3 shared requests of the pair, else from the
    simulation."""
    plans = []
    policies: dict[int, list[str]] = {}
    for point, label in simulated:
        policies.setdefault(point, []).append(label)
    for point, labels in sorted(policies.items()):
        for a, b in itertools.combinations(sorted(labels), 2):
            gaps = _gaps(simulated, point, a, b)
            if gaps.size < 2:
                continue
            mean_a = float(np.mean(list(simulated[(point, a)].values())))
            mean_b = float(np.mean(list(simulated[(point, b)].values())))
            gap = float(gaps.mean())
            relative = abs(mean_a - mean_b) / min(mean_a, mean_b)
            if relative <= min_gap:
                continue
            spread, source = float(gaps.std(ddof=1)), "simulator"
            if spread_source is not None:
                real = _gaps(spread_source, point, a, b)
                if real.size >= 3:
                    spread, source = float(real.std(ddof=1)), "recorded run"
            faster, slower = (a, b) if gap < 0 else (b, a)
            needed = paired_sample_size(gap, spread, power=power, max_n=max_requests)
            plans.append(PairPlan(point, faster, slower, abs(gap), relative, spread, source,
                                  needed))  # fmt: skip
    return plans


def requests_per_point(plans: Sequence[PairPlan], max_requests: int) -> int:
    """Requests per point that separate every planned pair (`max_requests` where some pair
    needs more than that; 0 without pairs)."""
    if not plans:
        return 0
    return min(max((p.requests or max_requests) for p in plans), max_requests)


def seeds_for(requests: int, requests_per_seed: int) -> list[int]:
    """Seeds 1..k, k the least giving at least `requests` requests (at least 1)."""
    return list(range(1, max(1, math.ceil(requests / requests_per_seed)) + 1))


def plan_record(plans: Sequence[PairPlan], requests: int, seeds: Sequence[int]) -> dict[str, Any]:
    """The manifest's `ranking_plan` entry."""
    return {
        "min_relative_gap": MIN_GAP,
        "power": POWER,
        "confidence": 0.95,
        "requests_per_point": requests,
        "seeds": list(seeds),
        "pairs": [p.__dict__ for p in plans],
    }


def plan_outcome(
    plans: Sequence[PairPlan], separated: dict[int, list[tuple[str, str, float, float]]]
) -> list[dict[str, Any]]:
    """Per planned pair, what the real run found: separated (paired t-test at 95%, as
    validation.validate.separated_pairs) in the simulator's order, the other way, or not."""
    outcome = []
    for plan in plans:
        found = {(f, s): (gap, half) for f, s, gap, half in separated.get(plan.point, [])}
        if (plan.faster, plan.slower) in found:
            verdict, (gap, half) = (
                "separated, the simulator's order",
                found[(plan.faster, plan.slower)],
            )
        elif (plan.slower, plan.faster) in found:
            verdict, (gap, half) = "separated, the other way", found[(plan.slower, plan.faster)]
        else:
            verdict, gap, half = "not separated", None, None
        outcome.append({"point": plan.point, "faster": plan.faster, "slower": plan.slower,
                        "sim_gap_ms": plan.gap_ms, "real": verdict, "real_gap_ms": gap,
                        "half_width_ms": half})  # fmt: skip
    return outcome


__all__ = [
    "PairPlan",
    "paired_power",
    "paired_sample_size",
    "plan_outcome",
    "plan_pairs",
    "plan_record",
    "recorded_tpts",
    "requests_per_point",
    "seeds_for",
    "simulated_tpts",
]
