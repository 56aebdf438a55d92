"""The many-edge testbed's progress bar counts what the fleet runs: one step per session (policy
and seed), DiP-SD included (realrun.fleet advances it once per session)."""

from __future__ import annotations

from pathlib import Path

from realrun import cli
from simulator.scenario import expand_sweep

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "dipsd_6users.toml"


def test_a_fleet_counts_sessions_with_dipsd() -> None:
    overrides = ["prompts.count=3", "seeds=[1, 2]", 'reference_policy="dipsd"',
                 'policies=[{name="dipsd"}, {name="vanilla"}]']  # fmt: skip
    points = expand_sweep(SCENARIO, overrides, ["link.uplink_mbps=5,10"])
    assert len(points) == 2
    assert cli.testbed_requests(points) == 2 * 2 * 2  # points x policies x seeds


def test_one_edge_counts_requests() -> None:
    overrides = ["prompts.count=3", "seeds=[1, 2]", "edge_groups=[]"]
    points = expand_sweep(SCENARIO, [*overrides, 'policies=[{name="vanilla"}]',
                                     'reference_policy="vanilla"'])  # fmt: skip
    assert cli.testbed_requests(points) == 3 * 2
