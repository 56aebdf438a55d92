"""PipeSD's (R1, R2) tuner backends side by side: final TPT of S1-S4 with the numpy GP and skopt.

Simulates PipeSD on each scenario (as `pipesd run --policies pipesd` does, in this process, on
one core), once per backend (`policies.pipesd.tune_backend`), with the same seeds, and prints per
scenario the token-weighted TPT over all seeds of each backend, their ratio, how many seeds
are within 1 %, and the mean final thresholds and BO evaluations. The backends see different
objective sequences (each picks its own points), so per-seed TPTs differ (by up to ±20 %:
a tuning run's 16 noisy evaluations pick different thresholds); the check is that the numpy
GP's choices are as good: its aggregate TPT at most 1 % above skopt's.

    python benchmarks/bench_autotune_quality.py [--seeds 20] [--first-seed 1] [--scenarios s1,...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simulator.engine import simulate
from simulator.scenario import expand_sweep

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("skopt", "gp")
LABEL = "pipesd"
TOLERANCE = 0.01


def run(scenario: str, backend: str, seeds: range) -> tuple[dict, float]:
    """Per-seed (decode seconds, decode tokens) of PipeSD, its mean final state, the wall time.

    The same simulations as `pipesd run scenarios/pipesd_<scenario>.toml --policies pipesd
    --set seeds=[1, ..., N] --set policies.pipesd.tune_backend="<backend>" --jobs 1`.
    """
    overrides = [
        f"seeds=[{', '.join(str(seed) for seed in seeds)}]",
        f'policies.{LABEL}.tune_backend="{backend}"',
    ]
    point = expand_sweep(ROOT / "scenarios" / f"pipesd_{scenario}.toml", overrides)[0]
    entry = next(p for p in point.scenario.policies if p.label == LABEL)
    per_seed: dict[int, list[float]] = {}
    states: list[dict[str, float]] = []
    start = time.perf_counter()
    for seed in point.scenario.model.seeds:
        result = simulate(point.scenario, entry, seed=seed)
        per_seed[seed] = [
            sum(r.decode_s for r in result.records),
            sum(r.new_tokens - 1 for r in result.records),
        ]
        states.append(result.policy_state)
    wall_s = time.perf_counter() - start
    state = {
        key: sum(s[key] for s in states) / len(states) for key in ("r1", "r2", "bo_evaluations")
    }
    return {"per_seed": per_seed, "state": state}, wall_s


def tpt_ms(totals: list[float]) -> float:
    """Token-weighted time per token in milliseconds."""
    return 1e3 * totals[0] / totals[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per scenario")
    parser.add_argument("--first-seed", type=int, default=1, help="seeds first..first+N-1")
    parser.add_argument("--scenarios", default="s1,s2,s3,s4", help="comma-separated")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(
        f"PipeSD, seeds {seeds[0]}..{seeds[-1]}: "
        "TPT (ms, token-weighted over all seeds) per backend"
    )
    print(
        f"{'scenario':8s} {'skopt':>9s} {'gp':>9s} {'gp/skopt':>9s} {'seeds ±1%':>10s} "
        f"{'gp faster':>10s} {'seed ratios':>13s} "
        f"{'R1 skopt/gp':>12s} {'R2 skopt/gp':>12s} {'BO evals':>9s} {'wall s':>12s}"
    )
    worst = slowest = 0.0
    for scenario in args.scenarios.split(","):
        results, walls = {}, {}
        for backend in BACKENDS:
            results[backend], walls[backend] = run(scenario, backend, seeds)
        total = {
            backend: [sum(results[backend]["per_seed"][seed][i] for seed in seeds) for i in (0, 1)]
            for backend in BACKENDS
        }
        ratio = tpt_ms(total["gp"]) / tpt_ms(total["skopt"])
        worst = max(worst, abs(ratio - 1.0))
        slowest = max(slowest, ratio - 1.0)
        seed_ratios = [
            tpt_ms(results["gp"]["per_seed"][seed]) / tpt_ms(results["skopt"]["per_seed"][seed])
            for seed in seeds
        ]
        close = sum(abs(r - 1.0) <= TOLERANCE for r in seed_ratios)
        better = sum(r < 1.0 for r in seed_ratios)
        state = {backend: results[backend]["state"] for backend in BACKENDS}
        print(
            f"{scenario:8s} {tpt_ms(total['skopt']):9.2f} {tpt_ms(total['gp']):9.2f} "
            f"{ratio:9.4f} {close:>4d} of {len(seeds):<3d} {better:>4d} of {len(seeds):<3d} "
            f"{min(seed_ratios):6.3f}-{max(seed_ratios):<6.3f} "
            f"{state['skopt']['r1']:5.2f}/{state['gp']['r1']:<6.2f} "
            f"{state['skopt']['r2']:5.2f}/{state['gp']['r2']:<6.2f} "
            f"{state['gp']['bo_evaluations']:9.1f} "
            f"{walls['skopt']:5.1f}/{walls['gp']:<6.1f}"
        )
    verdict = "as good" if slowest <= TOLERANCE else "NOT as good"
    print(f"largest |gp/skopt - 1| of the aggregate TPT: {100 * worst:.2f} %")
    print(
        f"largest gp/skopt - 1 (gp slower): {100 * slowest:.2f} % "
        f"({verdict}: the goal is at most {100 * TOLERANCE:g} % slower)"
    )


if __name__ == "__main__":
    main()
