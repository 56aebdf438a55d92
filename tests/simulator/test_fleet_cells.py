"""A fleet split into cells runs on a local Ray instance as on one process (issue 16.5)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from simulator.backends import InlineBackend, RayBackend
from simulator.runner import execute, plan_tasks
from simulator.scenario import expand_sweep

FLEET = Path(__file__).resolve().parents[2] / "scenarios" / "many_edges.toml"
CELLS = [  # benchmarks/bench_fleet_scale.py's fleet, small: 3 cells (seeds) of 4 edges
    "prompts.count=1",
    "prompts.max_new_tokens=24",
    "edge_groups=[{count=4, compute_spread=0.3, start_spread_s=5.0, uplink_mbps=20.0}]",
    "seeds=[1, 2, 3]",
    'policies=[{name="vanilla"}, {name="pipesd"}]',
]


def _records(backend, tasks) -> dict[tuple[int, int], list]:
    return {
        (task.policy_index, task.seed): outcome.records
        for (task, _), outcome in backend.map_unordered(execute, tasks)
    }


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_cells_on_ray_give_the_records_of_one_process() -> None:
    points = expand_sweep(FLEET, CELLS)
    tasks = [(task, False) for task in plan_tasks(points)]
    assert len(tasks) == 6  # 3 cells x 2 policies, one task each
    inline = _records(InlineBackend(), tasks)
    on_ray = _records(RayBackend(None, num_cpus=2), tasks)
    assert on_ray == inline
    assert {len(records) for records in inline.values()} == {4}  # each cell: its 4 edges
    assert inline[(0, 1)] != inline[(0, 2)]  # cells differ: each has its own seed
