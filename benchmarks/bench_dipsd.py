"""DiP-SD on the paper's system: the optimiser's plan, its throughput against AD, and its wall time.

Prints the plan (N, assignment, draft lengths), the steady-state span and throughput, the two
autoregressive baselines, and the median wall time of `optimise` with and without the local
search polish. With `--agreement K` it also compares the optimiser with brute force on K
random 2-4 user systems around the paper's constants (l_max = 6, every third one with a
memory cap that binds).

    python benchmarks/bench_dipsd.py [--repeats 5] [--agreement 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

from policies.dipsd.autoregressive import autoregressive, autoregressive_greedy_batching
from policies.dipsd.brute_force import brute_force
from policies.dipsd.constants import paper_system
from policies.dipsd.optimiser import optimise
from policies.dipsd.plan import Plan
from policies.dipsd.sampling import sample_system


def timed(repeats: int, polish: bool) -> tuple[Plan, float]:
    """The plan and the median wall time of `optimise(paper_system())` in seconds."""
    times = []
    plan = None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = optimise(paper_system(), polish=polish)
        times.append(time.perf_counter() - start)
    assert plan is not None
    return plan, statistics.median(times)


def agreement(count: int) -> None:
    """Print gap statistics of the optimiser (with and without polish) against brute force."""
    for polish in (False, True):
        gaps, optimiser_s, brute_s = [], 0.0, 0.0
        for seed in range(count):
            system = sample_system(seed)
            start = time.perf_counter()
            plan = optimise(system, polish=polish)
            optimiser_s += time.perf_counter() - start
            start = time.perf_counter()
            best = brute_force(system, 6)
            brute_s += time.perf_counter() - start
            gaps.append(1 - plan.throughput_tokens_per_s / best.throughput_tokens_per_s)
        print(
            f"  polish={polish!s:5}  cases {count}  exact (gap <= 1e-9) "
            f"{sum(g <= 1e-9 for g in gaps)}  gap > 1 %: {sum(g > 0.01 for g in gaps)}  "
            f"max gap {max(gaps):.3%}  mean gap {statistics.fmean(gaps):.4%}  "
            f"optimiser {optimiser_s / count * 1e3:.0f} ms/case  "
            f"brute force {brute_s / count * 1e3:.1f} ms/case"
        )


def main() -> None:
    """Optimise the paper's system, compare with the baselines, optionally check agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed optimiser runs")
    parser.add_argument("--agreement", type=int, default=0, help="random brute-force cases")
    args = parser.parse_args()

    system = paper_system()
    plan, seconds = timed(args.repeats, polish=True)
    plain, plain_seconds = timed(args.repeats, polish=False)
    ad = autoregressive(system)
    greedy = autoregressive_greedy_batching(system)

    print("DiP-SD on the paper's system (M = 6, a = 0.78, Qwen3-1.7B -> Qwen3-32B)")
    print(f"  batches N      {plan.n_batches}")
    print(f"  assignment     {plan.assignment}")
    print(f"  draft lengths  {plan.lengths}")
    print(f"  span           {plan.span_s * 1e3:.2f} ms")
    rows = [
        ("DiP-SD", plan),
        ("DiP-SD, no polish", plain),
        ("AD (one batch)", ad),
        ("AD greedy batching", greedy),
    ]
    for name, row in rows:
        ratio = row.throughput_tokens_per_s / ad.throughput_tokens_per_s
        print(
            f"  {name:20} {row.throughput_tokens_per_s:8.2f} tokens/s  x{ratio:.3f} vs AD  "
            f"(N = {row.n_batches}, lengths {row.lengths})"
        )
    print(f"  optimise wall time (median of {args.repeats}): {seconds * 1e3:.0f} ms")
    print(f"  without polish:                     {plain_seconds * 1e3:.0f} ms")
    if args.agreement:
        print(f"Brute-force agreement on {args.agreement} random systems (M = 2-4, l_max = 6)")
        agreement(args.agreement)


if __name__ == "__main__":
    main()
