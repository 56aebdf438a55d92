"""PipeSD's online α, β, γ estimates converge to the simulator's true costs (issue 15.6).

The executor reports an upload's duration (handed over -> answered) only when no earlier
message was still awaiting its answer, so no sample includes waiting behind an earlier batch.
The duration of an upload of n tokens that did not queue is, on the simulated link,
α + β·n with α = uplink overhead + header transmission + latency both ways + downlink overhead
and β = bytes per token / uplink bandwidth; γ is the draft time per token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.engine import simulate
from simulator.fleet import edge_specs
from simulator.payload import payload_for
from simulator.scenario import expand_sweep

S1 = Path(__file__).resolve().parents[2] / "scenarios" / "pipesd_s1.toml"


@pytest.mark.parametrize(("uplink_mbps", "compute_factor"), [(20.0, 0.5), (8.0, 1.0)])
def test_estimates_converge_to_the_true_costs(uplink_mbps: float, compute_factor: float) -> None:
    overrides = [
        "prompts.count=4",
        "seeds=[1]",
        f"link.uplink_mbps={uplink_mbps}",
        f"edge.compute_factor={compute_factor}",
    ]
    scenario = expand_sweep(S1, overrides)[0].scenario
    entry = next(p for p in scenario.policies if p.name == "pipesd")
    state = simulate(scenario, entry, 1).policy_state

    spec = edge_specs(scenario, 1)[0]
    profile = scenario.profile.profile
    payload = payload_for(profile.payload, scenario.model.payload)
    seconds_per_byte = 8.0 / (uplink_mbps * 1e6)
    alpha = (
        spec.uplink_overhead_s
        + payload.message_header * seconds_per_byte
        + 2 * spec.one_way_latency_s
        + spec.downlink_overhead_s
    )
    beta = payload.per_draft_token * seconds_per_byte
    prompts = scenario.model.prompts
    gamma = profile.draft_latency.decode_s(prompts.prompt_len + prompts.max_new_tokens // 2)
    assert state["alpha_s"] == pytest.approx(alpha, rel=0.02)
    assert state["beta_s"] == pytest.approx(beta, rel=0.02)
    assert state["gamma_s"] == pytest.approx(gamma / compute_factor, rel=0.05)
