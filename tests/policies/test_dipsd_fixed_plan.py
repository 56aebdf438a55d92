"""DiP-SD's `plan` parameter: a fixed fleet plan the simulator executes instead of optimising."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from policies.dipsd.policy import FixedPlan
from simulator.dipsd_plan import fleet_plan, plan_batches
from simulator.engine import simulate
from simulator.errors import ConfigError
from simulator.fleet import edge_specs
from simulator.scenario import expand_sweep

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dipsd_6users.toml"
SHORT = ["prompts.count=1", "prompts.max_new_tokens=120", "seeds=[1]"]


def plan_override(batches: list[list[int]], lengths: list[int]) -> str:
    """A `policies.dipsd.plan=...` override (TOML inline table)."""
    return f"policies.dipsd.plan={{batches={batches}, lengths={lengths}}}"


def run(overrides: list[str], timeline: bool = False):
    scenario = expand_sweep(SCENARIO, overrides)[0].scenario
    entry = next(p for p in scenario.policies if p.label == "dipsd")
    return scenario, simulate(scenario, entry, seed=1, record_timeline=timeline)


def records_digest(result) -> str:
    """SHA-256 of every record field (as tests/simulator/test_records_digest.py hashes them)."""
    hasher = hashlib.sha256()
    for record in result.records:
        for value in dataclasses.astuple(record):
            text = f"{value:.12g}" if isinstance(value, float) else repr(value)
            hasher.update(text.encode() + b"|")
    return hasher.hexdigest()


def served_batches(result) -> list[frozenset[int]]:
    """The edges of each verification the cloud ran, in time order (from the timeline)."""
    groups: dict[tuple[float, float], set[int]] = {}
    for span in result.timeline or []:
        if span.lane == "cloud" and span.label == "NAV":
            groups.setdefault((span.start_s, span.end_s), set()).add(span.edge)
    return [frozenset(edges) for _, edges in sorted(groups.items())]


def test_the_computed_plan_given_as_fixed_gives_identical_records() -> None:
    scenario, optimised = run(SHORT)
    plan = fleet_plan(scenario, edge_specs(scenario, 1))
    batches = [list(b) for b in plan_batches(plan)]
    _, fixed = run([*SHORT, plan_override(batches, list(plan.lengths))])
    assert records_digest(fixed) == records_digest(optimised)
    assert fixed.plan_throughput_tokens_per_s == optimised.plan_throughput_tokens_per_s


def test_a_different_fixed_plan_is_executed_as_given() -> None:
    scenario, _ = run(SHORT)
    computed = fleet_plan(scenario, edge_specs(scenario, 1))
    batches, lengths = [[5, 0, 3], [1, 2, 4]], [2, 9, 3, 5, 2, 9]
    assert (tuple(map(tuple, batches)), tuple(lengths)) != (
        plan_batches(computed),
        computed.lengths,
    )
    _, result = run([*SHORT, plan_override(batches, lengths)], timeline=True)
    served = served_batches(result)
    full = [frozenset(b) for b in batches]
    # while every edge is active, the cloud cycles through the given batches in the given order
    steady = served[: len(served) // 2]
    assert len(steady) >= 4
    assert all(group == full[i % len(full)] for i, group in enumerate(steady))
    for record in result.records:
        # each edge drafts its given length (its last NAVs may be cut short by max_new_tokens)
        assert record.verified <= record.navs * lengths[record.edge]
        assert record.verified >= (record.navs - 2) * lengths[record.edge]


@pytest.mark.parametrize(
    ("batches", "lengths", "field", "problem"),
    [
        ([[0, 1, 2], [3, 4, 4]], [3] * 6, "policies.dipsd.plan", "exactly once"),
        ([[0, 1, 2], [3, 4]], [3] * 6, "policies.dipsd.plan", "exactly once"),
        ([[0, 1, 2], [3, 4, 7]], [3] * 6, "policies.dipsd.plan", "exactly once"),
        ([[0, 1, 2], []], [3] * 3, r"policies.dipsd.plan.batches\[1\]", "at least 1"),
        ([[0, 1, 2], [3, 4, 5]], [3, 3, 3, 0, 3, 3], r"plan.lengths\[3\]", "greater than"),
        ([[0, 1, 2], [3, 4, 5]], [3, 3, 3, 300, 3, 3], r"plan.lengths\[3\]", "less than"),
        ([[0, 1, 2], [-1, 4, 5]], [3] * 6, r"plan.batches\[1\]\[0\]", "greater than"),
    ],
)
def test_bad_plans_are_refused_in_one_line(batches, lengths, field, problem) -> None:
    with pytest.raises(ConfigError, match=field) as error:
        expand_sweep(SCENARIO, [*SHORT, plan_override(batches, lengths)])
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_a_plan_for_another_edge_count_is_refused_in_one_line() -> None:
    overrides = [*SHORT, plan_override([[0, 1], [2, 3]], [3, 3, 3, 3])]
    with pytest.raises(ConfigError, match=r"plan\.lengths: plans 4 edges; the scenario has 6"):
        expand_sweep(SCENARIO, overrides)
    # a plan given after loading (as the fleet validation gives the run's) is checked by the
    # simulator itself
    scenario = expand_sweep(SCENARIO, SHORT)[0].scenario
    entry = next(p for p in scenario.policies if p.label == "dipsd")
    plan = FixedPlan(batches=((0, 1), (2, 3)), lengths=(3, 3, 3, 3))
    entry = entry.model_copy(update={"params": entry.params.model_copy(update={"plan": plan})})
    with pytest.raises(ConfigError, match=r"plan\.lengths: plans 4 edges; the scenario has 6"):
        simulate(scenario, entry, seed=1)
