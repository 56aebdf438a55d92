"""Times PipeSD's per-decision policy steps (DP batch plan, BO ask+tell) against their budgets."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from functools import partial

from policies.pipesd.autotune import SkoptThresholdTuner
from policies.pipesd.batch_plan import plan_batches

DP_SIZES = (16, 32, 64)
DP_REPEATS = 2000
DP_GOAL_MS = 1.0
"""Goal for N̂ = 64."""
BO_SEEDS = range(5)
BO_GOAL_MS = 50.0
BO_RANDOM_STEPS = SkoptThresholdTuner().n_initial_points - 1
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


def bo_step_times_ms(seed: int) -> list[float]:
    """Wall time of every ask+tell in one full tuning run, in milliseconds."""
    tuner = SkoptThresholdTuner(seed=seed)
    times = []
    while not tuner.done:
        start = time.perf_counter()
        point = tuner.ask()
        tuner.tell(point, bo_objective(*point))
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    for label, (alpha, beta, gamma) in COSTS.items():
        for n_tokens in DP_SIZES:
            ms = median_ms(partial(plan_batches, n_tokens, alpha, beta, gamma), DP_REPEATS)
            goal = f"(goal < {DP_GOAL_MS:g} ms)" if n_tokens == max(DP_SIZES) else ""
            print(f"DP plan   {label:12s} N̂={n_tokens:3d}: {ms:7.3f} ms median {goal}")
    for seed in BO_SEEDS:
        times = bo_step_times_ms(seed)
        guided = times[BO_RANDOM_STEPS:]
        print(
            f"BO step   seed {seed}: {statistics.median(times):5.1f} ms median of {len(times)} "
            f"(goal < {BO_GOAL_MS:g} ms); GP-guided only: {statistics.median(guided):5.1f} ms "
            f"median, {max(guided):5.1f} ms max"
        )


if __name__ == "__main__":
    main()
