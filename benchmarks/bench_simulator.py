"""Simulated tokens per second on one core for one edge, every policy side by side.

Runs the PipeSD S1 scenario (full-distribution payload, 20/200 Mbit/s) with many requests in
one process, one policy after the other, and prints generated tokens per wall-clock second and
the ratio to Vanilla measured in the same run. PipeSD runs with every feature on (DP pipeline,
dual trigger, proactive drafting, online BO autotuner), and also without the autotuner to show
what the tuner's GP steps cost.

    python benchmarks/bench_simulator.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from simulator.engine import simulate
from simulator.scenario import Scenario, expand_sweep

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "pipesd_s1.toml"
GOAL_TOKENS_PER_S = 200_000


def main() -> None:
    """Time each policy of S1 and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per policy")
    parser.add_argument(
        "--cloud-paths",
        action="store_true",
        help="also time the cloud's general queueing process against the one-edge fast path",
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    scenario = expand_sweep(SCENARIO, [f"prompts.count={args.requests}"])[0].scenario
    rows = []
    with threadpool_limits(limits=1):
        for entry in scenario.policies:
            start = time.perf_counter()
            result = simulate(scenario, entry, seed=1)
            wall = time.perf_counter() - start
            tokens = sum(r.new_tokens for r in result.records)
            drafted = sum(r.drafted for r in result.records)
            navs = sum(r.navs for r in result.records)
            rows.append((entry.label, tokens, drafted, navs, wall, tokens / wall))
    reference = next(r for r in rows if r[0] == "vanilla")[5]
    print(f"one edge, one core, S1, {args.requests} requests x 128 tokens per policy")
    print(
        f"{'policy':22s} {'tokens':>8s} {'drafted':>8s} {'NAVs':>7s} {'wall s':>7s} "
        f"{'tokens/s':>10s} {'vs vanilla':>10s}"
    )
    for label, tokens, drafted, navs, wall, rate in rows:
        print(
            f"{label:22s} {tokens:8d} {drafted:8d} {navs:7d} {wall:7.2f} {rate:10.0f} "
            f"{rate / reference:10.2f}"
        )
    pipesd = next(r for r in rows if r[0] == "pipesd")[5]
    print(
        f"goal: >= {GOAL_TOKENS_PER_S} simulated tokens/s; PipeSD (all features) "
        f"{pipesd:.0f}, slowest policy {min(r[5] for r in rows):.0f}"
    )
    if args.cloud_paths:
        compare_cloud_paths(scenario)


def compare_cloud_paths(scenario: Scenario) -> None:
    """Before/after of the largest optimisation: the cloud as a SimPy process with a queue
    (as for many edges) against the one-edge path that starts each job when announced."""
    print("cloud: queue -> one-edge fast path   tokens/s            identical records")
    with threadpool_limits(limits=1):
        for entry in scenario.policies:
            if entry.label not in ("vanilla", "pipesd", "pipesd-no-autotune"):
                continue
            rates, records = {}, {}
            for exclusive in (False, True):
                start = time.perf_counter()
                result = simulate(scenario, entry, seed=1, exclusive_cloud=exclusive)
                wall = time.perf_counter() - start
                rates[exclusive] = sum(r.new_tokens for r in result.records) / wall
                records[exclusive] = result.records
            print(
                f"  {entry.label:22s} {rates[False]:9.0f} -> {rates[True]:9.0f} "
                f"(x{rates[True] / rates[False]:.2f})  {records[False] == records[True]}"
            )


if __name__ == "__main__":
    main()
