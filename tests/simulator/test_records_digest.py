"""Pins the simulator's records on a few scenario / policy / seed cases (issue 16.3).

Speed-ups of the engine must leave every record unchanged: this test hashes the records (and
the policy's end state) of each case. A change that is meant to alter results updates the
digests and says why in its commit: `python tests/simulator/test_records_digest.py` prints
the current ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from simulator.engine import simulate
from simulator.scenario import expand_sweep

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
S1 = ["prompts.count=4"]
FLEET = [
    "prompts.count=1",
    "prompts.max_new_tokens=64",
    "edge_groups=[{count=12, compute_spread=0.3, start_spread_s=0.5, uplink_mbps=20.0}]",
]
CASES: dict[str, tuple[str, list[str], str, int]] = {
    "s1-vanilla": ("pipesd_s1.toml", S1, "vanilla", 1),
    "s1-edgellm": ("pipesd_s1.toml", S1, "edgellm", 2),
    "s1-pmin": ("pipesd_s1.toml", S1, "pmin", 1),
    "s1-pipesd": ("pipesd_s1.toml", S1, "pipesd", 1),
    "s1-pipesd-no-autotune": ("pipesd_s1.toml", S1, "pipesd-no-autotune", 3),
    "s1-oracle": ("pipesd_s1.toml", S1, "oracle", 1),
    "s1-cloud_ar": ("pipesd_s1.toml", S1, "cloud_ar", 1),
    "s4-pipesd": ("pipesd_s4.toml", ["prompts.count=3"], "pipesd", 2),
    "fleet-vanilla": ("many_edges.toml", FLEET, "vanilla", 1),
    "fleet-pipesd": ("many_edges.toml", FLEET, "pipesd", 1),
}
DIGESTS = {
    "s1-vanilla": "1b02e5550451afd3",
    "s1-edgellm": "874616d9e9a196d0",
    "s1-pmin": "d7a533a25961fa33",
    "s1-pipesd": "de7cc1c07fb97964",
    "s1-pipesd-no-autotune": "2483d57f09e56331",
    "s1-oracle": "c3ec519ed700bd48",
    "s1-cloud_ar": "6590679ee4b6aaf1",
    "s4-pipesd": "d34d459093a222ba",
    "fleet-vanilla": "72ea6e522ff69c76",
    "fleet-pipesd": "c50f4b5b0ea1dc6c",
}


def digest(case: str) -> str:
    """SHA-256 of the case's records (every field, floats to 12 significant digits)."""
    file, overrides, label, seed = CASES[case]
    if file == "many_edges.toml":
        overrides = [*overrides, f'policies=[{{name="{label}"}}]', f'reference_policy="{label}"']
    scenario = expand_sweep(SCENARIOS / file, overrides)[0].scenario
    entry = next(e for e in scenario.policies if e.label == label)
    result = simulate(scenario, entry, seed=seed)
    hasher = hashlib.sha256()
    for record in result.records:
        for value in dataclasses.astuple(record):
            text = f"{value:.12g}" if isinstance(value, float) else repr(value)
            hasher.update(text.encode() + b"|")
    for key, value in sorted(result.policy_state.items()):
        hasher.update(f"{key}={value:.12g}|".encode())
    return hasher.hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(CASES))
def test_records_are_pinned(case: str) -> None:
    assert digest(case) == DIGESTS[case], f"{case}: the simulator's records changed"


if __name__ == "__main__":
    for name in CASES:
        print(f'    "{name}": "{digest(name)}",')
