"""`simulate`: one policy on every edge of one scenario point with one seed, in SimPy.

The twin's parts: edges drafting under their policies (simulator/edge.py, over the bookkeeping
core policies/session.py), serialised uplink/downlink channels (simulator/link.py), one cloud
verifier serving jobs in arrival order, alone or batched (simulator/cloud.py), and the cloud's
own token streams for cloud-only generation and split inference (simulator/ar_stream.py).
Policies say what they need through their interface (policies/base.py): a fleet-planned
policy (`uses_fleet_plan`) is given its draft length by the fleet plan, which also orders the
cloud's batches: the policy's own fixed plan where it gives one, else the optimiser's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from policies.base import Policy
from policies.dipsd.plan import Plan, make_plan
from policies.picospec.topk_acceptance import TopKEffect
from policies.registry import make_policy
from policies.seeding import policy_seed
from simulator.acceptance import AcceptanceModel, topk_effect_from_trace
from simulator.cloud import Cloud
from simulator.compute import ComputeTrace, edge_speed
from simulator.dipsd_plan import fleet_plan, fleet_system, plan_batches
from simulator.edge import Edge, EdgeConfig, SessionStats
from simulator.errors import ConfigError
from simulator.fleet import EdgeSpec, edge_specs
from simulator.link import Channel
from simulator.link_jitter import JitteredChannel
from simulator.payload import payload_for
from simulator.profile import LoadedProfile
from simulator.records import RequestRecord, Span
from simulator.scenario import Scenario
from simulator.scenario_sections import PayloadSection, PolicyEntry


@dataclass
class SimResult:
    """The outcome of simulating one policy on one scenario point with one seed."""

    records: list[RequestRecord]
    session: SessionStats
    policy_state: dict[str, float]
    cloud_busy_s: float
    end_s: float
    timeline: list[Span] | None = field(default=None)
    edges: int = 1
    cloud_batches: int = 0
    cloud_jobs: int = 0
    plan_throughput_tokens_per_s: float = math.nan
    """DiP-SD: the optimiser's closed-form throughput for the plan the run executed."""


@functools.lru_cache(maxsize=32)
def _topk_effect(trace: Path, k: int) -> TopKEffect:
    """The trace's top-K effect, read once per process (the same file in every run)."""
    return topk_effect_from_trace(trace, k)


def topk_for(loaded: LoadedProfile, payload: PayloadSection) -> TopKEffect | None:
    """The effect of the policy's top-K downlink on acceptance: from the profile's
    `topk_trace` when the answer carries the top-K at every position (with the exact p(x)
    per position, acceptance is exact); None otherwise."""
    trace = loaded.profile.topk_trace
    if not payload.downlink_top_k or trace is None:
        return None
    if payload.downlink_scheme != "topk_every_position":
        return None
    return _topk_effect((loaded.path.parent / trace).resolve(), payload.downlink_top_k)


def topk_state(loaded: LoadedProfile, payload: PayloadSection) -> dict[str, float]:
    """policy_state entries for a top-K downlink: the distribution error (TV between the
    sparse-verified output and the target) and the acceptance it implies."""
    topk = topk_for(loaded, payload)
    if topk is None:
        return {}
    return {"topk_tv_error": topk.tv_error, "topk_acceptance": topk.topk_acceptance}


def scenario_plan(
    scenario: Scenario, specs: list[EdgeSpec], entry: PolicyEntry, policy: Policy
) -> Plan:
    """The policy's fixed fleet plan (`given_fleet_plan`) if it has one, for as many edges as
    the scenario's (else a one-line ConfigError), or else the optimiser's."""
    given = policy.given_fleet_plan()
    if given is None:
        return fleet_plan(scenario, specs)
    assignment, lengths = given
    if len(lengths) != len(specs):
        raise ConfigError(scenario.path, f"policies.{entry.label}.plan.lengths",
                          f"plans {len(lengths)} edges; the scenario has {len(specs)}")  # fmt: skip
    return make_plan(fleet_system(scenario, specs), assignment, lengths, ())


JITTER_STREAM = 0x717E
"""Tags the random stream of an edge's uplink jitter draws (from the run's seed and the edge)."""


def uplink_channel(spec: EdgeSpec, seed: int) -> Channel:
    """The edge's uplink: jittered where the scenario gives samples (`[link] uplink_jitter`),
    each edge drawing from its own stream of the run's seed."""
    args = (spec.uplink, spec.uplink_overhead_s, spec.one_way_latency_s, spec.burst_bytes)
    if spec.uplink_jitter is None:
        return Channel(*args)
    stream = np.random.SeedSequence([seed, spec.index, JITTER_STREAM]).generate_state(1)[0]
    return JitteredChannel(*args, spec.uplink_jitter, int(stream))


def simulate(
    scenario: Scenario,
    entry: PolicyEntry,
    seed: int,
    record_timeline: bool = False,
    exclusive_cloud: bool = True,
) -> SimResult:
    """Simulate one policy on every edge of one scenario point with one seed.

    Each edge runs its own instance of the policy. `exclusive_cloud=False` forces the cloud's
    general queueing process even for one edge (the tests check the fast path changes nothing).
    """
    profile = scenario.profile.profile
    model = scenario.model
    env = simpy.Environment()
    timeline: list[Span] | None = [] if record_timeline else None
    acceptance_spec = model.acceptance or profile.acceptance
    acceptance_dir = scenario.base_dir if model.acceptance else scenario.profile.path.parent
    acceptance = AcceptanceModel(acceptance_spec, acceptance_dir)
    specs = edge_specs(scenario, seed)
    policies = [
        make_policy(entry.name, entry.params, policy_seed(seed, entry.label, spec.index))
        for spec in specs
    ]
    planned = policies[0].uses_fleet_plan
    plan = scenario_plan(scenario, specs, entry, policies[0]) if planned else None
    if plan is not None:
        for spec, policy in zip(specs, policies, strict=True):
            policy.on_fleet_plan(plan.lengths[spec.index])
    cloud_factor, cloud_trace = model.cloud.compute_factor, None
    if model.cloud.compute_trace is not None:
        path = scenario.resolve(model.cloud.compute_trace)
        cloud_trace = ComputeTrace.from_csv(path, model.cloud.compute_trace_repeat)
        if cloud_trace.constant is not None:  # a constant trace is a compute factor
            cloud_factor, cloud_trace = cloud_factor * cloud_trace.constant, None
    target_latency = profile.target_latency.faster(cloud_factor)
    cloud = Cloud(
        env,
        timeline,
        target_latency,
        exclusive=exclusive_cloud and len(specs) == 1,
        max_batch=model.cloud.max_batch,
        batch_window_s=model.cloud.batch_window_s,
        plan=plan_batches(plan) if plan else None,
        speed=cloud_trace,
    )
    payload = payload_for(profile.payload, entry.payload)  # the policy's own payload
    edges = []
    services: dict[tuple[int, int], float] = {}  # NAV service times, for every edge's target
    acceptance_models: dict[int, AcceptanceModel] = {}
    for spec, policy in zip(specs, policies, strict=True):
        own = spec.profile.profile
        if own is not profile and id(own) not in acceptance_models:
            spec_dir = spec.profile.path.parent
            acceptance_models[id(own)] = AcceptanceModel(
                model.acceptance or own.acceptance,
                scenario.base_dir if model.acceptance else spec_dir,
            )
        topk = topk_for(spec.profile, entry.payload)
        config = EdgeConfig(
            topk=topk,
            draft=own.draft_latency,
            target=target_latency,
            power=own.power,
            payload=payload if own is profile else payload_for(own.payload, entry.payload),
            compute_factor=spec.compute_factor,
            max_draft_tokens=model.edge.max_draft_tokens,
            prompt_len=model.prompts.prompt_len,
            max_new_tokens=model.prompts.max_new_tokens,
            requests=spec.requests,
            seed=seed,
            edge=spec.index,
            start_s=spec.start_s,
            arrivals=spec.arrivals,
            split=own.split,
            speed=edge_speed(spec.compute_trace, own.edge_thermal, spec.prefill_trace),
        )
        uplink = uplink_channel(spec, seed)
        downlink = Channel(
            spec.downlink, spec.downlink_overhead_s, spec.one_way_latency_s, spec.burst_bytes
        )
        edge_acceptance = acceptance if own is profile else acceptance_models[id(own)]
        edges.append(
            Edge(env, config, policy, cloud, uplink, downlink, edge_acceptance, timeline, services)
        )
    env.run(until=env.all_of([edge.process for edge in edges]))
    session = SessionStats()
    for edge in edges:
        session.probe_messages += edge.session.probe_messages
        session.probe_bytes += edge.session.probe_bytes
        session.probe_time_s = max(session.probe_time_s, edge.session.probe_time_s)
    return SimResult(
        records=[r for edge in edges for r in edge.records],
        session=session,
        policy_state={**policies[0].state(), **topk_state(scenario.profile, entry.payload)},
        cloud_busy_s=cloud.busy_s,
        end_s=env.now,
        timeline=timeline,
        edges=len(edges),
        cloud_batches=cloud.batches,
        cloud_jobs=cloud.jobs,
        plan_throughput_tokens_per_s=plan.throughput_tokens_per_s if plan else math.nan,
    )
