"""DiP-SD's fleet plan for a scenario: draft length per edge and the cloud's ordered batches.

The optimiser (`policies/dipsd/optimiser.py`) works on DiP-SD's affine-in-FLOPs model
(`policies/dipsd/cost_model.py`). Here its inputs come from the scenario: each edge's
acceptance rate (i.i.d. model required), prefix (the prompt length) and per-token drafting
time (the profile's decode time at that prefix, scaled by the edge's compute factor); the
server's β_v is the profile's forward base time and c_v is set so that c_v·F_v(L, I) equals the
profile's per-position cost times L at the prompt's prefix. Communication per round is the
link's latency both ways plus message overheads. Model shapes and server memory are those of
the paper's system (Qwen3-32B), used for FLOPs and the memory constraint only.
"""

from __future__ import annotations

import dataclasses

from policies.dipsd.constants import paper_system
from policies.dipsd.cost_model import DipsdSystem, DipsdUser, verify_flops
from policies.dipsd.optimiser import optimise
from policies.dipsd.plan import Plan
from simulator.acceptance_spec import IIDAcceptance
from simulator.errors import ConfigError
from simulator.fleet import EdgeSpec
from simulator.scenario import Scenario


def fleet_system(scenario: Scenario, specs: list[EdgeSpec]) -> DipsdSystem:
    """DiP-SD's system for the scenario's edges."""
    profile = scenario.profile.profile
    acceptance = scenario.model.acceptance or profile.acceptance
    if not isinstance(acceptance, IIDAcceptance):
        raise ConfigError(
            scenario.path, "acceptance.kind", "DiP-SD plans need the 'iid' acceptance model"
        )
    prefix = scenario.model.prompts.prompt_len
    draft_s = profile.draft_latency.decode_s(prefix)
    users = tuple(
        DipsdUser(
            acceptance=acceptance.rate,
            prefix_len=prefix,
            c_s_per_flop=0.0,
            beta_s=draft_s / spec.compute_factor,
        )
        for spec in specs
    )
    paper = paper_system()
    per_position_flops = verify_flops(paper.target_shape, 1, prefix)
    comm = max(2 * s.one_way_latency_s + s.uplink_overhead_s + s.downlink_overhead_s for s in specs)
    return dataclasses.replace(
        paper,
        users=users,
        c_v=profile.target_latency.forward_per_token_s / per_position_flops,
        beta_v=profile.target_latency.forward_base_s,
        comm_s=comm,
    )


def fleet_plan(scenario: Scenario, specs: list[EdgeSpec]) -> Plan:
    """The optimiser's plan for the scenario's edges."""
    return optimise(fleet_system(scenario, specs))


def plan_batches(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """Edge indices of each batch, in verification order."""
    return tuple(
        tuple(user for user, batch in enumerate(plan.assignment) if batch == n)
        for n in range(plan.n_batches)
    )
