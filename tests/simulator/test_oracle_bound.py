"""The oracle bound (simulator/oracle_bound.py) is below every policy's request duration, on
random small scenarios: links, latencies, draft speed, payloads, acceptance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.registry import POLICIES
from simulator.engine import simulate
from simulator.oracle_bound import request_bounds
from simulator.scenario import validate_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SKIPPED = {"split"}  # split inference is not covered by the bound (see its module docstring)
POLICY_NAMES = [name for name in POLICIES if name not in SKIPPED]


def scenario(draw_values: dict[str, Any]):
    raw = {
        "name": "bound",
        "profile": "profiles/default.json",
        "seeds": [draw_values["seed"]],
        "prompts": {"count": 2, "prompt_len": 24, "max_new_tokens": draw_values["tokens"]},
        "edge": {"compute_factor": draw_values["compute"]},
        "link": {
            "uplink_mbps": draw_values["up"],
            "downlink_mbps": draw_values["down"],
            "one_way_latency_s": draw_values["latency"],
            "burst_bytes": draw_values["burst"],
        },
        "payload": {"kind": draw_values["payload"], "top_k": 4},
        "policies": [
            {"name": name}
            for name in POLICY_NAMES
            if name != "dipsd" or draw_values["iid"] is not None  # DiP-SD plans need i.i.d.
        ],
        "reference_policy": "vanilla",
    }
    if draw_values["iid"] is not None:
        raw["acceptance"] = {"kind": "iid", "rate": draw_values["iid"]}
    return validate_scenario(raw, SCENARIOS / "bound.toml")


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.fixed_dictionaries(
        {
            "seed": st.integers(0, 1000),
            "tokens": st.integers(2, 24),
            "compute": st.floats(0.2, 4.0),
            "up": st.floats(0.5, 200.0),
            "down": st.floats(2.0, 500.0),
            "latency": st.floats(0.0, 0.08),
            "burst": st.sampled_from([0.0, 2000.0]),
            "payload": st.sampled_from(["token_id", "token_prob", "topk", "full"]),
            "iid": st.one_of(st.none(), st.floats(0.0, 0.99)),
        }
    )
)
def test_bound_is_below_every_policy(values: dict[str, Any]) -> None:
    point = scenario(values)
    seed = values["seed"]
    bounds = request_bounds(point, seed)
    speculative = request_bounds(point, seed, cloud_only=False)
    for entry in point.policies:
        mine = bounds if entry.name == "cloud_ar" else speculative
        for record in simulate(point, entry, seed).records:
            duration = record.end_s - record.start_s
            bound = mine[(record.edge, record.request)]
            assert bounds[(record.edge, record.request)] <= bound
            assert bound <= duration * (1 + 1e-9), (entry.label, record.request, bound, duration)
