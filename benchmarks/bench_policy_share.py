"""How much of a simulation is the policy's own work: a run against its decisions replayed.

Runs a policy (default: PipeSD with every feature) once, recording every decision its
`on_draft` and `on_result` return (and its tuner-step count after each answer), then runs the
same scenario again with a policy that only plays those decisions back from a list: the same
NAVs, uploads and records (checked), with next to no policy work. The difference is what the
policy's callbacks cost; the replayed run is the floor that cutting the policy's code could
reach without changing its behaviour. Vanilla is timed alongside, in the same process. CPU
time (`time.process_time`), each run's least of `--repeats`, one core.

    python benchmarks/bench_policy_share.py [--policy pipesd] [--edges 1] [--repeats 3]

With `--edges 1` (default) the scenario is S1 with 1,000 requests x 128 tokens, as
`bench_simulator.py`; with more edges it is `bench_many_edges.py`'s fleet (256 tokens each).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

import simulator.engine as engine
from policies.base import Decision, Policy, VerifyOutcome
from policies.registry import make_policy
from simulator.engine import simulate
from simulator.scenario import Scenario, expand_sweep
from simulator.scenario_sections import PolicyEntry

ROOT = Path(__file__).resolve().parents[1]


class Replayed(Policy):
    """Plays back one edge's recorded decisions (the executor's calls come in the same order)."""

    def __init__(self, original: Policy, drafts: list[Decision], answers: list[Any]) -> None:
        self.drafts_while_pending = original.drafts_while_pending
        self.tuner_step_s = original.tuner_step_s
        self._probes = original.startup_probe_sizes()
        self._next_draft = iter(drafts).__next__
        self._next_answer = iter(answers).__next__

    def startup_probe_sizes(self) -> tuple[int, ...]:
        return self._probes

    def on_upload(self, n_tokens: int, duration_s: float) -> None:
        """Heard, as the original's (so the executor keeps its report path), and ignored."""

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        return self._next_draft()

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        decision, self.tuner_steps = self._next_answer()
        return decision


def recorded(policy: Policy, log: tuple[list[Decision], list[Any]]) -> Policy:
    """`policy`, with its decisions appended to `log` as it makes them."""
    drafts, answers = log
    on_draft, on_result = policy.on_draft, policy.on_result

    def draft(confidence: float, draft_time_s: float, pending: bool) -> Decision:
        decision = on_draft(confidence, draft_time_s, pending)
        drafts.append(decision)
        return decision

    def answer(outcome: VerifyOutcome) -> Decision:
        decision = on_result(outcome)
        answers.append((decision, policy.tuner_steps))
        return decision

    policy.on_draft, policy.on_result = draft, answer  # type: ignore[method-assign]
    return policy


def replaying(
    originals: list[Policy], logs: list[tuple[list[Decision], list[Any]]]
) -> Callable[..., Policy]:
    """A `make_policy` for one run: the k-th policy built replays the k-th edge's log."""
    edge = iter(range(len(logs)))

    def make(*_: Any) -> Policy:
        k = next(edge)
        return Replayed(originals[k], *logs[k])

    return make


def timed(scenario: Scenario, entry: PolicyEntry, make: Callable[..., Policy] | None) -> tuple:
    """CPU seconds of one run and its records, with `make` building the policies if given."""
    if make is not None:
        engine.make_policy = make  # type: ignore[assignment]  # what the engine builds them by
    try:
        start = time.process_time()
        result = simulate(scenario, entry, seed=1)
        return time.process_time() - start, [astuple(r) for r in result.records]
    finally:
        engine.make_policy = make_policy


def main() -> None:
    """Record the policy's decisions, then time it, its replay and Vanilla side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="pipesd", help="a policy label of the scenario")
    parser.add_argument("--edges", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.edges == 1:
        path, overrides = ROOT / "scenarios" / "pipesd_s1.toml", ["prompts.count=1000"]
    else:
        fleet = (
            f"edge_groups=[{{count={args.edges}, compute_spread=0.3, start_spread_s=5.0, "
            f"uplink_mbps=20.0}}]"
        )
        overrides = ["prompts.count=1", "prompts.max_new_tokens=256", fleet]
        overrides.append(
            'policies=[{name="vanilla"}, {name="pipesd", label="pipesd-no-autotune", '
            'autotune=false}, {name="pipesd"}]'
        )
        path = ROOT / "scenarios" / "many_edges.toml"
    scenario = expand_sweep(path, overrides)[0].scenario
    entry = next(e for e in scenario.policies if e.label == args.policy)
    vanilla = next(e for e in scenario.policies if e.label == "vanilla")
    logs: list[tuple[list[Decision], list[Any]]] = []
    originals: list[Policy] = []

    def recording(name: str, params: Any, seed: int) -> Policy:
        logs.append(([], []))
        originals.append(make_policy(name, params, seed))
        return recorded(originals[-1], logs[-1])

    times: dict[str, float] = {}
    with threadpool_limits(limits=1):
        _, reference = timed(scenario, entry, recording)
        for _ in range(args.repeats):
            for label, run_entry, make in (
                ("vanilla", vanilla, None),
                (args.policy, entry, None),
                ("replayed", entry, replaying(originals, logs)),
            ):
                cpu, records = timed(scenario, run_entry, make)
                times[label] = min(cpu, times.get(label, cpu))
                if label == "replayed" and records != reference:
                    raise SystemExit("the replayed run's records differ from the policy's")
    share = times[args.policy] - times["replayed"]
    base = times["vanilla"]
    print(
        f"{args.edges} edge(s), one core, CPU s, least of {args.repeats}: vanilla {base:.3f}; "
        f"{args.policy} {times[args.policy]:.3f} ({times[args.policy] / base:.2f}x Vanilla's "
        f"time, {base / times[args.policy]:.2f}x its rate); its decisions replayed "
        f"{times['replayed']:.3f} ({times['replayed'] / base:.2f}x, "
        f"{base / times['replayed']:.2f}x; records identical): its callbacks cost {share:.3f} "
        f"s, {share / times[args.policy]:.0%} of its run"
    )


if __name__ == "__main__":
    main()
