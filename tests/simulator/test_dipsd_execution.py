"""DiP-SD's plan executed in the discrete-event simulator, against the optimiser's closed form."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.dipsd.autoregressive import autoregressive_greedy_batching
from simulator.dipsd_plan import fleet_plan, fleet_system, plan_batches
from simulator.engine import simulate
from simulator.errors import ConfigError
from simulator.fleet import edge_specs
from simulator.scenario import expand_sweep

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dipsd_6users.toml"
LONG = ["prompts.count=1", "prompts.max_new_tokens=2000", "seeds=[1]"]


def run(label: str, overrides: list[str], timeline: bool = False):
    scenario = expand_sweep(SCENARIO, overrides)[0].scenario
    entry = next(p for p in scenario.policies if p.label == label)
    return scenario, simulate(scenario, entry, seed=1, record_timeline=timeline)


def throughput(result) -> float:
    span = max(r.end_s for r in result.records) - min(r.start_s for r in result.records)
    return sum(r.new_tokens for r in result.records) / span


def test_simulated_dipsd_throughput_is_close_to_the_closed_form() -> None:
    _, result = run("dipsd", LONG)
    simulated, closed_form = throughput(result), result.plan_throughput_tokens_per_s
    # the closed form is a steady state; the run also has prefills and a tail in which users
    # that finished early leave their batches short, so it can only be slower
    assert closed_form * 0.92 <= simulated <= closed_form


def test_batched_autoregressive_matches_the_closed_form_baseline() -> None:
    scenario, result = run("ad-batched", LONG)
    closed_form = autoregressive_greedy_batching(fleet_system(scenario, edge_specs(scenario, 1)))
    assert throughput(result) == pytest.approx(closed_form.throughput_tokens_per_s, rel=0.05)
    assert result.cloud_jobs / result.cloud_batches == pytest.approx(6, rel=0.02)


def test_cloud_verifies_the_plans_batches_in_order() -> None:
    overrides = ["prompts.count=1", "prompts.max_new_tokens=200", "seeds=[1]"]
    scenario, result = run("dipsd", overrides, timeline=True)
    batches = plan_batches(fleet_plan(scenario, edge_specs(scenario, 1)))
    assert len(batches) >= 2
    groups: dict[tuple[float, float], set[int]] = {}
    for span in result.timeline or []:
        if span.lane == "cloud" and span.label == "NAV":
            groups.setdefault((span.start_s, span.end_s), set()).add(span.edge)
    served = [frozenset(edges) for _, edges in sorted(groups.items())]
    full = [set(b) for b in batches]
    # while every edge is active, the cloud cycles through the plan's batches in order
    steady = served[: len(served) // 2]
    assert steady and all(set(group) == full[i % len(full)] for i, group in enumerate(steady))


def test_each_edge_drafts_its_planned_length() -> None:
    overrides = ["prompts.count=1", "prompts.max_new_tokens=100", "seeds=[1]"]
    scenario, result = run("dipsd", overrides)
    plan = fleet_plan(scenario, edge_specs(scenario, 1))
    for record in result.records:
        # the last NAVs of a request may be cut short by max_new_tokens
        assert record.verified <= record.navs * plan.lengths[record.edge]
        assert record.verified >= (record.navs - 2) * plan.lengths[record.edge]


def test_dipsd_needs_iid_acceptance(write_scenario) -> None:
    path = write_scenario(
        policies=[{"name": "dipsd"}],
        edge_groups=[{"count": 2}],
        prompts={"count": 1, "prompt_len": 16, "max_new_tokens": 16},
    )
    with pytest.raises(ConfigError, match=r"acceptance\.kind"):
        expand_sweep(path)
