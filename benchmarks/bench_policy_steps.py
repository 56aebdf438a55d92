"""Times PipeSD's per-decision policy steps (DP batch plan, BO ask+tell) against their budgets.

The BO step is timed for both tuner backends side by side, the numpy GP (the default) and
scikit-optimize (the reference), on the same objective and seeds: median and p99 over every
ask+tell of a full tuning run, and over the GP-guided steps only. BLAS runs on one thread in
both (the tuners limit it), so a step uses one core.

    python benchmarks/bench_policy_steps.py [--bo-seeds 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from policies.pipesd.autotune import Backend, GpThresholdTuner, threshold_tuner
from policies.pipesd.batch_plan import plan_batches

DP_SIZES = (16, 32, 64)
DP_REPEATS = 2000
DP_GOAL_MS = 1.0
"""Goal for N̂ = 64."""
BO_BACKENDS: tuple[Backend, ...] = ("skopt", "gp")
BO_GOAL_MEDIAN_MS = 2.0
BO_GOAL_P99_MS = 5.0
BO_RANDOM_STEPS = GpThresholdTuner().n_initial_points - 1
"""Leading ask+tell steps that fit no GP (the tell of the last random point fits the first)."""
COSTS = {
    "draft-bound": (0.05, 0.01, 0.036),
    "upload-bound": (0.05, 0.1, 0.036),
}
"""(α, β, γ) in seconds: a fast uplink where drafting is the bottleneck, and a slow one."""


def median_ms(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of `step` over `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bo_objective(r1: float, r2: float) -> float:
    """A smooth seconds-per-token-like surface with one interior minimum."""
    return (
        0.08 + 0.2 * (r1 - 0.42) ** 2 + 0.6 * (r2 - 0.86) ** 2 + 0.002 * math.sin(9 * r1 + 5 * r2)
    )


def bo_step_times_ms(backend: Backend, seed: int) -> list[float]:
    """Wall time of every ask+tell in one full tuning run, in milliseconds."""
    tuner = threshold_tuner(backend, seed=seed)
    times = []
    while not tuner.done:
        start = time.perf_counter()
        point = tuner.ask()
        tuner.tell(point, bo_objective(*point))
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bo-seeds", type=int, default=10, help="tuning runs per backend")
    args = parser.parse_args()
    for label, (alpha, beta, gamma) in COSTS.items():
        for n_tokens in DP_SIZES:
            ms = median_ms(partial(plan_batches, n_tokens, alpha, beta, gamma), DP_REPEATS)
            goal = f"(goal < {DP_GOAL_MS:g} ms)" if n_tokens == max(DP_SIZES) else ""
            print(f"DP plan   {label:12s} N̂={n_tokens:3d}: {ms:7.3f} ms median {goal}")
    bo_step_times_ms("gp", 0)  # warm-up: first-call costs (imports, caches) are not a step
    bo_step_times_ms("skopt", 0)
    print(
        f"BO step (ask+tell), {args.bo_seeds} tuning runs of 16 per backend "
        f"(goal: <= {BO_GOAL_MEDIAN_MS:g} ms median, <= {BO_GOAL_P99_MS:g} ms p99)"
    )
    print(
        f"{'backend':8s} {'median':>9s} {'p99':>9s} {'max':>9s} "
        f"{'guided median':>14s} {'guided p99':>11s}"
    )
    summary = {}
    for backend in BO_BACKENDS:
        runs = [bo_step_times_ms(backend, seed) for seed in range(args.bo_seeds)]
        steps = [t for run in runs for t in run]
        guided = [t for run in runs for t in run[BO_RANDOM_STEPS:]]
        summary[backend] = (statistics.median(steps), float(np.percentile(steps, 99)))
        print(
            f"{backend:8s} {summary[backend][0]:6.2f} ms {summary[backend][1]:6.2f} ms "
            f"{max(steps):6.2f} ms {statistics.median(guided):11.2f} ms "
            f"{float(np.percentile(guided, 99)):8.2f} ms"
        )
    (old_median, old_p99), (new_median, new_p99) = summary["skopt"], summary["gp"]
    print(
        f"gp vs skopt: median {old_median / new_median:.0f}x faster, p99 "
        f"{old_p99 / new_p99:.0f}x faster; gp meets the goal: "
        f"{new_median <= BO_GOAL_MEDIAN_MS and new_p99 <= BO_GOAL_P99_MS}"
    )


if __name__ == "__main__":
    main()
