"""How the simulator's cost grows with edges and tokens, and a fleet split over workers.

`--sizes`: one fleet of N edges on one cloud (batches <= 32, as bench_many_edges.py) per size,
one core, Vanilla and PipeSD (every feature on): wall time and wall time per edge-token, side
by side in one run. `--cells C --cell-edges E`: a fleet of C x E edges as C independent cells
(each cell its own cloud and E edges, cell i simulated with seed i: the sweep's seeds), run as
separate tasks on a backend (`--backend ray` on a local Ray instance or `--address` a cluster,
`--backend process`, or inline), the same tasks `pipesd run scenarios/many_edges.toml --set
'seeds=[1,...,C]' --backend ray` runs.

    python benchmarks/bench_fleet_scale.py --sizes 100,1000,10000 [--tokens 256]
    python benchmarks/bench_fleet_scale.py --cells 100 --cell-edges 1000 --backend ray --jobs 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from simulator.backends import make_backend
from simulator.engine import simulate
from simulator.runner import Task, TaskOutcome, execute, plan_tasks
from simulator.scenario import SweepPoint, expand_sweep

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "many_edges.toml"
POLICIES = {"vanilla": '{name="vanilla"}', "pipesd": '{name="pipesd"}'}


def fleet_points(
    edges: int, tokens: int, seeds: list[int], policies: list[str]
) -> list[SweepPoint]:
    """The fleet scenario: `edges` heterogeneous edges on one cloud, one request each."""
    fleet = (
        f"edge_groups=[{{count={edges}, compute_spread=0.3, start_spread_s=5.0, uplink_mbps=20.0}}]"
    )
    entries = ", ".join(POLICIES[p] for p in policies)
    overrides = [
        "prompts.count=1",
        f"prompts.max_new_tokens={tokens}",
        fleet,
        f"seeds={seeds}",
        f"policies=[{entries}]",
        f'reference_policy="{policies[0]}"',
    ]
    return expand_sweep(SCENARIO, overrides)


def scaling(sizes: list[int], tokens: list[int], policies: list[str]) -> None:
    """One fleet per size and token count, one core, every policy; wall per edge-token."""
    print(f"one cloud, one core, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'edges':>7s} {'tokens':>6s} {'policy':8s} {'wall s':>8s} {'us/edge-token':>14s}")
    with threadpool_limits(limits=1):
        for n_tokens in tokens:
            for edges in sizes:
                point = fleet_points(edges, n_tokens, [1], policies)[0]
                for entry in point.scenario.policies:
                    start = time.perf_counter()
                    simulate(point.scenario, entry, seed=1)
                    wall = time.perf_counter() - start
                    per = wall / (edges * n_tokens) * 1e6
                    print(
                        f"{edges:7d} {n_tokens:6d} {entry.label:8s} {wall:8.2f} {per:14.2f}",
                        flush=True,
                    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def run_cells(
    cells: int,
    cell_edges: int,
    tokens: int,
    policies: list[str],
    backend_name: str,
    jobs: int,
    address: str | None,
) -> dict[str, tuple[int, int]]:
    """The C x E fleet as C cell tasks per policy on the backend: (edges, tokens) per policy."""
    points = fleet_points(cell_edges, tokens, list(range(1, cells + 1)), policies)
    tasks: list[tuple[Task, bool]] = [(task, False) for task in plan_tasks(points)]
    backend = make_backend(backend_name, jobs, address)
    totals = {p: (0, 0) for p in policies}
    for (task, _), outcome in backend.map_unordered(execute, tasks):
        assert isinstance(outcome, TaskOutcome)
        label = task.point.scenario.policies[task.policy_index].label
        edges, generated = totals[label]
        totals[label] = (
            edges + outcome.edges,
            generated + sum(r.new_tokens for r in outcome.records),
        )
    return totals


def main() -> None:
    """Parse the command line and run the scaling table or the cell-split fleet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="", help="comma-separated fleet sizes (one core)")
    parser.add_argument("--tokens", default="256", help="comma-separated new tokens per request")
    parser.add_argument("--policies", default="vanilla,pipesd")
    parser.add_argument("--cells", type=int, default=0)
    parser.add_argument("--cell-edges", type=int, default=1000)
    parser.add_argument("--backend", choices=("inline", "process", "ray"), default="ray")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--address", default=None, help="a Ray cluster (default: local)")
    args = parser.parse_args()
    policies = args.policies.split(",")
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.sizes:
        scaling([int(s) for s in args.sizes.split(",")], tokens, policies)
    if args.cells:
        start = time.perf_counter()
        totals = run_cells(
            args.cells,
            args.cell_edges,
            tokens[0],
            policies,
            args.backend,
            args.jobs,
            args.address,
        )
        wall = time.perf_counter() - start
        for label, (edges, generated) in totals.items():
            print(f"{label}: {edges} edges, {generated} tokens")
        print(
            f"{args.cells} cells x {args.cell_edges} edges x {tokens[0]} tokens, "
            f"{len(policies)} policies on {args.backend} ({args.jobs} workers): {wall:.1f} s wall, "
            f"load average {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
