"""What compute traces cost the simulator: one edge, Vanilla on S1, side by side in one run.

Four cases, interleaved round by round (best of the rounds per case): no trace; a constant
trace (folded into the compute factor: the plain path); an edge trace at factor 1 until after
the run (the cursor's comparison only); an edge and a cloud trace at factor 0.5 (every draft
step and cloud job scaled through the cursor). Prints simulated tokens per wall-clock second
and the ratio to the plain run.

    python benchmarks/bench_compute_trace.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from simulator.engine import simulate
from simulator.scenario import expand_sweep

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "pipesd_s1.toml"


def main() -> None:
    """Time the four cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (best of)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as folder:
        traces = {
            "constant": "t_s,factor\n0,1.0\n10,1.0\n",
            "late": "t_s,factor\n0,1.0\n1000000,0.5\n",
            "half": "t_s,factor\n0,0.5\n1000000,0.25\n",
        }
        for name, text in traces.items():
            (Path(folder) / f"{name}.csv").write_text(text)
        base = [f"prompts.count={args.requests}"]
        cases = {
            "no trace": base,
            "constant trace": [*base, f'edge.compute_trace="{folder}/constant.csv"'],
            "edge trace, factor 1": [*base, f'edge.compute_trace="{folder}/late.csv"'],
            "edge + cloud trace, 0.5": [
                *base,
                f'edge.compute_trace="{folder}/half.csv"',
                f'cloud.compute_trace="{folder}/half.csv"',
            ],
        }
        scenarios = {name: expand_sweep(SCENARIO, sets)[0].scenario for name, sets in cases.items()}
        best: dict[str, float] = {}
        tokens: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, scenario in scenarios.items():
                entry = next(p for p in scenario.policies if p.name == "vanilla")
                start = time.perf_counter()
                result = simulate(scenario, entry, seed=1)
                wall = time.perf_counter() - start
                best[name] = min(best.get(name, wall), wall)
                tokens[name] = sum(r.new_tokens for r in result.records)
    plain = tokens["no trace"] / best["no trace"]
    print(f"Vanilla on S1, one edge, one core, {args.requests} requests, best of {args.rounds}")
    print(f"{'case':26s} {'tokens/s':>10s} {'vs plain':>9s}")
    for name in cases:
        rate = tokens[name] / best[name]
        print(f"{name:26s} {rate:10.0f} {rate / plain:9.3f}")


if __name__ == "__main__":
    main()
