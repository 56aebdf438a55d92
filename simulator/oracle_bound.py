"""A lower bound on every request's duration that holds for every policy the engine can run.

`policies/baselines/oracle.py` is the best schedule among policies that do not draft while a
NAV is pending; PipeSD, EdgeLLM and PicoSpec do, and can beat it. This bound holds for any
speculative policy, drafting while pending or not, and for cloud-only decoding; it is the
time an oracle could not beat even with free choice of draft lengths, batch boundaries and
NAV points (split inference is not covered).

Bound (one request of N new tokens; `next_reject` is the acceptance stream every policy sees
for that request). The positions split into runs: r accepted positions s..s+r-1, then the
rejected position e = s+r whose correction only a NAV answer brings (the edge's own draft
there is the rejected token, so proactive drafts beyond e never survive). Nothing of run j
can happen before run j-1's correction reaches the edge at A_{j-1}. Within the run, each
position becomes known at the edge by drafting it (γ_p) or as the bonus of a NAV (a message
and a round trip later), so the last accepted position is known no earlier than
A_{j-1} + Σ_p min(γ_p, o_up + RTT); a NAV then leaves (o_up) and its answer takes RTT. Every
uploaded token crosses the uplink: with c NAVs at most c - 1 positions come as bonuses, so
at least r - c + 1 tokens and c headers go up, taking c·o_up plus their bytes over the
bandwidth (with a token bucket of B bytes: the larger of the two, bytes less B). So

    A_j >= A_{j-1} + RTT + max(Σ_p min(γ_p, o_up + RTT) + o_up,  min_c upload(c)),

where RTT = latency up + one verified position at the run's context + downlink overhead and
the smallest answer + latency down (cloud queueing, batching and longer passes only add),
and A_0 = start + the draft's prefill; the first answer also waits for the prompt upload and
the target's prefill. A run cut by N ends with its last position as a bonus. Cloud-only
decoding needs the prompt up, the prefill, N - 1 more single-position passes and one message
down. The bound is the smaller of the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from simulator.acceptance import AcceptanceModel
from simulator.fleet import EdgeSpec, edge_specs
from simulator.link import ConstantBandwidth
from simulator.payload import Payload, payload_for
from simulator.profile import DraftLatency, TargetLatency
from simulator.scenario import Scenario


@dataclass(frozen=True)
class LinkCosts:
    """One edge's link, as the bound needs it (constant bandwidths only)."""

    up_overhead_s: float
    up_latency_s: float
    up_bytes_per_s: float
    down_overhead_s: float
    down_latency_s: float
    down_bytes_per_s: float
    burst_bytes: float


def _transfer_s(n_bytes: float, bytes_per_s: float, burst_bytes: float) -> float:
    """Least time for `n_bytes` to cross a link whose token bucket holds `burst_bytes`."""
    return max(n_bytes - burst_bytes, 0.0) / bytes_per_s


def _upload_s(run: int, link: LinkCosts, payload: Payload) -> float:
    """Least uplink time to carry a run of `run` accepted positions, over the NAV count c."""
    best = math.inf
    for navs in range(1, run + 2):
        n_bytes = navs * payload.message_header + (run - navs + 1) * payload.per_draft_token
        overheads = navs * link.up_overhead_s
        bytes_s = _transfer_s(n_bytes, link.up_bytes_per_s, link.burst_bytes)
        # with a bucket, bytes may pass during the overheads; without, the channel is serial
        best = min(best, max(overheads, bytes_s) if link.burst_bytes else overheads + bytes_s)
    return best


def speculative_bound_s(
    next_reject: Sequence[int],
    n_new: int,
    prompt_len: int,
    draft_s: Sequence[float],
    draft_prefill_s: float,
    target: TargetLatency,
    link: LinkCosts,
    payload: Payload,
) -> float:
    """Least duration of a request under any speculative policy (module docstring)."""
    answer_s = link.down_overhead_s + link.down_latency_s
    answer_s += _transfer_s(payload.result_bytes(0), link.down_bytes_per_s, link.burst_bytes)
    prompt_up = link.up_overhead_s + link.up_latency_s
    prompt_bytes = payload.prompt_bytes(prompt_len)
    prompt_up += _transfer_s(prompt_bytes, link.up_bytes_per_s, link.burst_bytes)
    cloud_ready = prompt_up + target.prefill_s(prompt_len)
    known, start = draft_prefill_s, 0
    while start < n_new:
        reject = next_reject[start]
        run = reject - start if reject < n_new else n_new - 1 - start
        verify = target.forward_s(1, prompt_len + start)
        round_trip = link.up_latency_s + verify + answer_s
        hop = link.up_overhead_s + round_trip
        chain = math.fsum(min(draft_s[p], hop) for p in range(start, start + run))
        ahead = max(chain + link.up_overhead_s, _upload_s(run, link, payload))
        known = max(known + ahead + round_trip, cloud_ready + verify + answer_s)
        start += run + 1
    return known


def cloud_only_bound_s(
    n_new: int, prompt_len: int, target: TargetLatency, link: LinkCosts
) -> float:
    """Least duration of cloud-only decoding: prompt up, prefill, N - 1 passes, one message down."""
    passes = math.fsum(target.forward_s(1, prompt_len + p) for p in range(1, n_new))
    return (
        link.up_overhead_s
        + link.up_latency_s
        + target.prefill_s(prompt_len)
        + passes
        + link.down_overhead_s
        + link.down_latency_s
    )


def _link(spec: EdgeSpec) -> LinkCosts:
    if not isinstance(spec.uplink, ConstantBandwidth) or not isinstance(
        spec.downlink, ConstantBandwidth
    ):
        raise ValueError("the bound needs constant bandwidths (no traces)")
    return LinkCosts(
        spec.uplink_overhead_s,
        spec.one_way_latency_s,
        spec.uplink.mbps * 1e6 / 8.0,
        spec.downlink_overhead_s,
        spec.one_way_latency_s,
        spec.downlink.mbps * 1e6 / 8.0,
        spec.burst_bytes,
    )


def _draft_times(draft: DraftLatency, factor: float, prompt_len: int, n_new: int) -> list[float]:
    """The draft's time per output position, as the engine charges it."""
    base, per_context = draft.decode_base_s / factor, draft.decode_per_context_token_s / factor
    return [base + per_context * (prompt_len + p) for p in range(n_new)]


def request_bounds(
    scenario: Scenario, seed: int, payload: Payload | None = None, cloud_only: bool = True
) -> dict[tuple[int, int], float]:
    """The least duration of each (edge, request) of a scenario under `seed`, any policy.

    `payload`: the message sizes to assume (default: the scenario's); a bound for policies
    with different payloads takes the smallest. `cloud_only=False`: the speculative bound
    alone (for speculative policies only).
    """
    model = scenario.model
    if model.edge.compute_trace is not None or model.edge.prefill_compute_trace is not None:
        raise ValueError("the bound needs a constant draft speed (no compute trace)")
    prompt_len, n_new = model.prompts.prompt_len, model.prompts.max_new_tokens
    bounds: dict[tuple[int, int], float] = {}
    for spec in edge_specs(scenario, seed):
        own = spec.profile.profile
        acceptance = AcceptanceModel(
            model.acceptance or own.acceptance,
            scenario.base_dir if model.acceptance else spec.profile.path.parent,
        )
        sizes = payload or payload_for(own.payload, model.payload)
        target = scenario.profile.profile.target_latency.faster(model.cloud.compute_factor)
        link = _link(spec)
        draft_s = _draft_times(own.draft_latency, spec.compute_factor, prompt_len, n_new)
        prefill_s = own.draft_latency.prefill_s(prompt_len) / spec.compute_factor
        cloud = cloud_only_bound_s(n_new, prompt_len, target, link) if cloud_only else math.inf
        for request in range(spec.requests):
            stream = acceptance.stream(seed, spec.index, request, n_new)
            speculative = speculative_bound_s(
                stream.next_reject, n_new, prompt_len, draft_s, prefill_s, target, link, sizes
            )
            bounds[(spec.index, request)] = min(speculative, cloud)
    return bounds
