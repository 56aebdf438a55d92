"""The simulator charges PipeSD's online BO steps to the edge's timeline (issue 16.2)."""

from __future__ import annotations

from pathlib import Path

from simulator.engine import simulate
from simulator.scenario import expand_sweep

S1 = Path(__file__).resolve().parents[2] / "scenarios" / "pipesd_s1.toml"


def _run(step_s: float, factor: float, timeline: bool = False):
    overrides = [
        "prompts.count=6",
        f"edge.compute_factor={factor}",
        f'policies=[{{name="vanilla"}}, {{name="pipesd", tuner_step_s={step_s}}}]',
    ]
    scenario = expand_sweep(S1, overrides)[0].scenario
    return simulate(scenario, scenario.policies[1], seed=2, record_timeline=timeline)


def test_each_bo_step_costs_the_edge_its_profiled_time_over_the_compute_factor() -> None:
    free, charged = _run(0.0, 2.0), _run(0.05, 2.0, timeline=True)
    steps = int(charged.policy_state["bo_evaluations"])
    assert steps == int(free.policy_state["bo_evaluations"]) > 0
    tuner = [s for s in charged.timeline if s.label == "tuner"]
    assert len(tuner) == steps  # one answer runs at most one step here (30-token windows)
    assert all(abs(s.end_s - s.start_s - 0.025) < 1e-12 for s in tuner)
    busy_free = sum(r.edge_busy_s for r in free.records)
    busy_charged = sum(r.edge_busy_s for r in charged.records)
    assert abs(busy_charged - busy_free - steps * 0.025) < 1e-9
    assert max(r.end_s for r in charged.records) > max(r.end_s for r in free.records)


def test_no_tuner_no_charge() -> None:
    overrides = ["prompts.count=3", 'policies=[{name="vanilla"}, {name="pipesd", autotune=false}]']
    scenario = expand_sweep(S1, overrides)[0].scenario
    result = simulate(scenario, scenario.policies[1], seed=1, record_timeline=True)
    assert not [s for s in result.timeline if s.label == "tuner"]
