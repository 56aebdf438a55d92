"""DiP-SD against its baselines as the paper defines them, for M users, simulated and in
closed form side by side (issue 15): AD (no cross-user batching), AD with greedy batching and
DiP-SD's plan, each executed by the many-edge engine on `scenarios/dipsd_users_sweep.toml`.

    python -m figures.dipsd_baselines [--users 2,4,8,12,16] [--tokens 1024]

prints a markdown table (the one in docs/results.md). Simulated throughput is the runner's
(tokens over the span from the first request's start to the last token, so it includes the
prefills and the tail in which early finishers leave batches short); the closed form is the
steady state of `policies/dipsd/cost_model.py` on the scenario's system
(`simulator/dipsd_plan.fleet_system`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from policies.dipsd.autoregressive import autoregressive, autoregressive_greedy_batching
from policies.dipsd.optimiser import optimise
from simulator.dipsd_plan import fleet_system
from simulator.engine import simulate
from simulator.fleet import edge_specs
from simulator.metrics import fleet_metrics
from simulator.scenario import Scenario, read_scenario_file, validate_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "dipsd_users_sweep.toml"
USERS = (2, 4, 8, 12, 16)
SEED = 1


@dataclass(frozen=True)
class UsersRow:
    """Throughputs (tokens/s) at M users: simulated and closed form per scheme."""

    users: int
    ad_sim: float
    ad_formula: float
    greedy_sim: float
    greedy_formula: float
    dipsd_sim: float
    dipsd_formula: float
    batches: int
    lengths: tuple[int, ...]


def scenario_at(users: int, max_batch: int, tokens: int, path: Path = SCENARIO) -> Scenario:
    """The sweep scenario with `users` edges, the cloud's batch cap and new tokens set."""
    raw = read_scenario_file(path)
    raw.pop("sweep", None)
    raw["edge_groups"][0]["count"] = users
    raw["cloud"]["max_batch"] = max_batch
    raw["prompts"]["max_new_tokens"] = tokens
    return validate_scenario(raw, path)


def _simulated(scenario: Scenario, label: str) -> float:
    entry = next(p for p in scenario.policies if p.label == label)
    return fleet_metrics([simulate(scenario, entry, SEED)])["throughput_tokens_per_s"]


def measure(users: int, tokens: int, path: Path = SCENARIO) -> UsersRow:
    """One row: AD at cloud.max_batch = 1, greedy batching at max_batch = M, DiP-SD's plan."""
    alone = scenario_at(users, 1, tokens, path)
    greedy = scenario_at(users, users, tokens, path)
    system = fleet_system(alone, edge_specs(alone, SEED))
    plan = optimise(system)
    return UsersRow(
        users=users,
        ad_sim=_simulated(alone, "ad"),
        ad_formula=autoregressive(system).throughput_tokens_per_s,
        greedy_sim=_simulated(greedy, "ad"),
        greedy_formula=autoregressive_greedy_batching(system).throughput_tokens_per_s,
        dipsd_sim=_simulated(alone, "dipsd"),
        dipsd_formula=plan.throughput_tokens_per_s,
        batches=plan.n_batches,
        lengths=plan.lengths,
    )


def markdown(rows: list[UsersRow]) -> str:
    """The table: throughput simulated (closed form) and DiP-SD's speedups over each baseline."""
    lines = [
        "| M | AD sim (formula) | greedy sim (formula) | DiP-SD sim (formula) | plan N, l "
        "| DiP-SD/AD sim (formula) | DiP-SD/greedy sim (formula) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lengths = "/".join(str(length) for length in sorted(set(r.lengths)))
        lines.append(
            f"| {r.users} | {r.ad_sim:.1f} ({r.ad_formula:.1f}) "
            f"| {r.greedy_sim:.1f} ({r.greedy_formula:.1f}) "
            f"| {r.dipsd_sim:.1f} ({r.dipsd_formula:.1f}) | {r.batches}, {lengths} "
            f"| {r.dipsd_sim / r.ad_sim:.2f}x ({r.dipsd_formula / r.ad_formula:.2f}x) "
            f"| {r.dipsd_sim / r.greedy_sim:.2f}x ({r.dipsd_formula / r.greedy_formula:.2f}x) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default=",".join(map(str, USERS)), help="comma-separated M")
    parser.add_argument("--tokens", type=int, default=1024, help="new tokens per user")
    args = parser.parse_args(argv)
    rows = []
    for users in (int(u) for u in args.users.split(",")):
        rows.append(measure(users, args.tokens))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
