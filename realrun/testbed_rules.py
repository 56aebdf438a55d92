"""What a scenario's policies can be on the testbed, and how: which policies it runs or skips
(and why), greedy or sampling and where each policy is verified (server or edge top-K), the
bytes a policy's messages carry and the server's body limit they need, and the checks that
refuse a bad combination in one line before any model loads. Pure rules over the scenario,
shared by realrun.testbed (one edge), realrun.local, realrun.fleet and validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.base import Mode
from policies.registry import POLICIES
from realrun.cloud.settings import ServerSettings, body_limit_bytes
from simulator.acceptance import AcceptanceModel
from simulator.errors import ConfigError
from simulator.payload import Payload, payload_for
from simulator.scenario import Scenario, SweepPoint
from simulator.scenario_sections import PayloadSection, PolicyEntry

NEEDS_FLEET = "needs a fleet of edges"
"""`skip_reason` of a fleet-plan policy (DiP-SD): a many-edge testbed runs it."""


def skip_reason(name: str) -> str | None:
    """Why a policy cannot run on the testbed (None: it can)."""
    policy_class = POLICIES[name][1]
    if getattr(policy_class, "mode", Mode.SPECULATIVE) != Mode.SPECULATIVE:
        return "not an edge-drafting policy"
    if getattr(policy_class, "is_oracle", False):
        return "needs future acceptance outcomes"
    if getattr(policy_class, "uses_fleet_plan", False):
        return NEEDS_FLEET
    return None


def check_vocabularies(draft_vocab: int, target_vocab: int, acceptance: str) -> None:
    """Refuse a draft the target cannot verify (one-line ConfigError): with real acceptance
    the two must share a tokenizer (equal vocabularies, at least); synthetic acceptance (e.g.
    random-weight models of the papers' shapes) needs only the draft's ids in the target's."""
    if acceptance == "real" and draft_vocab != target_vocab:
        raise ConfigError(
            "--draft",
            "",
            f"its vocabulary ({draft_vocab}) differs from the target's ({target_vocab}): real "
            "acceptance needs a pair sharing a tokenizer (or use --acceptance synthetic)",
        )
    if draft_vocab > target_vocab:
        raise ConfigError(
            "--draft",
            "",
            f"its vocabulary ({draft_vocab}) is larger than the target's ({target_vocab}): "
            "its tokens cannot all be verified",
        )


MACHINE_SPEED = (
    "must be left unset (factor 1, spread 0, no trace): the testbed's draft and target run at "
    "the machine's own speed, which a run measures (compute_edge.csv, compute_cloud.csv) and "
    "validation replays"
)
"""Why a compute speed in a testbed scenario is refused (it would be ignored)."""


OWN_JITTER = (
    "must be left unset: the testbed's link has its own delay spread, which a run records "
    "(timeline lane report) and validation replays"
)
"""Why an uplink jitter in a testbed scenario is refused (it would be ignored)."""


def check_recorded_conditions(scenario_path: Path, points: Sequence[SweepPoint]) -> None:
    """Refuse what the testbed records rather than emulates (one-line ConfigError naming the
    field): compute speeds (it cannot slow or speed its models) and the uplink's jitter (its
    link has its own), which the run would silently ignore and a simulation of the same
    scenario apply."""
    for point in points:
        model = point.scenario.model
        if model.link.uplink_jitter is not None:
            raise ConfigError(scenario_path, "link.uplink_jitter", OWN_JITTER)
        edge, cloud = model.edge, model.cloud
        speeds = {
            "edge.compute_factor": edge.compute_factor != 1.0,
            "edge.compute_trace": edge.compute_trace is not None,
            "edge.prefill_compute_trace": edge.prefill_compute_trace is not None,
            "cloud.compute_factor": cloud.compute_factor != 1.0,
            "cloud.compute_trace": cloud.compute_trace is not None,
        }
        for i, group in enumerate(model.edge_groups):
            speeds[f"edge_groups[{i}].compute_factor"] = group.compute_factor not in (None, 1.0)
            speeds[f"edge_groups[{i}].compute_spread"] = group.compute_spread > 0.0
            speeds[f"edge_groups[{i}].compute_trace"] = group.compute_trace is not None
        for field, is_set in speeds.items():
            if is_set:
                raise ConfigError(scenario_path, field, MACHINE_SPEED)


def refill_s(point: SweepPoint) -> float:
    """How long the point's link needs to refill its token buckets after a burst of use (the
    slower direction, at its rate at t = 0), so a session starts on an idle link as the
    simulator's does."""
    from realrun.link.shaping import LinkSpec  # loads httpx (optional) when imported

    spec = LinkSpec.from_point(point)
    rate = min(spec.uplink.at(0.0), spec.downlink.at(0.0)) * 1e6 / 8
    return spec.burst_bytes / rate + 2 * spec.one_way_latency_s


@dataclass(frozen=True)
class SamplingSpec:
    """Speculative sampling on the testbed (`--temperature`, `--top-k`): the draft samples at
    `temperature` from its top-`top_k` tokens (None: the scenario's default, `sampling_top_k`)."""

    temperature: float
    top_k: int | None = None


def sampling_top_k(
    scenario: Scenario, top_k: int | None, payload: PayloadSection | None = None
) -> tuple[int, str]:
    """(top-K of the edge's draft distributions, where it comes from) for `scenario` (and a
    policy's `payload`, default the scenario's `[payload]`).

    Default: the scenario's `payload.top_k` when `payload.kind` is "topk"; otherwise (full
    distributions, or token ids or probabilities only, which speculative sampling cannot use)
    the largest K whose distributions of a whole NAV fit one request body of the server
    (realrun.edge.drafts.max_sampling_top_k: the full vocabulary never does, 64 KiB bodies).
    One-line ConfigError if `top_k` (or the scenario's) is below 1 or does not fit.
    """
    from realrun.edge.drafts import max_sampling_top_k  # loads msgpack (optional) when imported
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    tokens = tokens_per_message(scenario)
    fits = max_sampling_top_k(tokens)
    body = Limits(n_vocab=1).max_body_bytes // 1024
    why = f"top-K distributions of {tokens} draft tokens must fit the server's {body} KiB body"
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= fits:
            raise ConfigError("--top-k", str(top_k), f"must be an integer in [1, {fits}] ({why})")
        return top_k, "--top-k"
    payload = payload if payload is not None else scenario.model.payload
    if payload.kind != "topk":
        return fits, f"largest fitting the body limit (payload.kind = {payload.kind!r})"
    if payload.top_k > fits:
        raise ConfigError(
            "--top-k",
            "",
            f"the scenario's payload.top_k = {payload.top_k} is too large: {why}; "
            f"pass --top-k in [1, {fits}]",
        )
    return payload.top_k, "payload.top_k"


def check_sampling(
    sampling: SamplingSpec | None, scenario: Scenario, acceptance: str = "real"
) -> tuple[int, str] | None:
    """Refuse bad sampling settings (one-line ConfigError naming the flag and the allowed
    range); returns `sampling_top_k` (None: greedy)."""
    from realrun.protocol import MAX_TEMPERATURE  # loads msgpack (optional) when imported

    if sampling is None:
        return None
    t = sampling.temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= MAX_TEMPERATURE:
        raise ConfigError("--temperature", str(t), f"must be in (0, {MAX_TEMPERATURE:g}]")
    if acceptance == "synthetic":
        raise ConfigError(
            "--temperature",
            str(t),
            "cannot be combined with --acceptance synthetic (the acceptance stream, not "
            "sampling, decides what is accepted)",
        )
    for entry in scenario.policies:  # each policy's own payload must fit too
        sampling_top_k(scenario, sampling.top_k, entry.payload)
    check_edge_top_k(scenario, sampling)
    return sampling_top_k(scenario, sampling.top_k)


def policy_payload(scenario: Scenario, entry: PolicyEntry) -> Payload:
    """The byte sizes of what `entry` sends (its own payload, or the scenario's)."""
    return payload_for(scenario.profile.profile.payload, entry.payload)


def states_full(scenario: Scenario, entry: PolicyEntry) -> bool:
    """Whether the scenario states `entry`'s payload kind as "full" (its own `payload` table
    or the scenario's `[payload]`): the schema's default kind is "full" too, but scenarios
    that leave it out are run greedily with one probability per token, as before."""
    raw_entries = [e for e in scenario.raw.get("policies", []) if isinstance(e, dict)]
    own = next((e for e in raw_entries if e.get("label", e.get("name")) == entry.label), {})
    stated = own.get("payload", {}).get("kind") or scenario.raw.get("payload", {}).get("kind")
    return entry.payload.kind == "full" and stated == "full"


def full_row_bytes(scenario: Scenario, entry: PolicyEntry) -> int | None:
    """Bytes per probability of `entry`'s full draft distributions on the wire (None unless
    the scenario states its payload kind as "full": `states_full`): the profile's
    `row_probability_bytes` (what the simulator charges then too), else its
    `probability_bytes` rounded down to a float width (2, 4 or 8: float16/32/64; msgpack's
    9-byte float64 travels as 8, one byte less than the simulator charges)."""
    from realrun.protocol import ROW_DTYPES  # msgpack, as the other protocol imports here

    if not states_full(scenario, entry):
        return None
    payload = scenario.profile.profile.payload
    if payload.row_probability_bytes is not None:
        return payload.row_probability_bytes
    size = max(payload.probability_bytes, 2)
    return max(b for b in ROW_DTYPES if b <= size)


def body_limit(scenario: Scenario, sampling: SamplingSpec | None = None) -> int:
    """The server's request-body limit this scenario needs: the largest message any of its
    full-row policies (`full_row_bytes`) that a testbed edge runs can send (tokens_per_message
    drafts of its payload, with the header), with the margin of
    realrun.cloud.settings.body_limit_bytes (one-line ConfigError past its ceiling, naming the
    policy's payload); the default 64 KiB otherwise (ids and probabilities, or top-K
    distributions sized to fit it: `sampling_top_k`; a sampling run sends no full rows).
    Policies no testbed edge runs (cloud-only, split, oracles) send nothing and count not."""
    tokens = tokens_per_message(scenario)
    limit = ServerSettings.max_body_bytes
    if sampling is not None:
        return limit
    for entry in scenario.policies:
        if skip_reason(entry.name) not in (None, NEEDS_FLEET):
            continue
        if full_row_bytes(scenario, entry) is None:
            continue
        largest = policy_payload(scenario, entry).batch_bytes(tokens)
        field = f"policies.{entry.label}.payload ({entry.payload.kind}, {tokens} tokens)"
        limit = max(limit, body_limit_bytes(largest, str(scenario.path), field))
    return limit


def check_body_limit(
    scenario: Scenario,
    server_max_body_bytes: int,
    server: str,
    sampling: SamplingSpec | None = None,
) -> None:
    """One-line ConfigError if the server's body limit is below what `scenario` needs."""
    needed = body_limit(scenario, sampling)
    if server_max_body_bytes < needed:
        raise ConfigError(
            server,
            "max_body_bytes",
            f"the server takes request bodies up to {server_max_body_bytes} bytes, this "
            f"scenario's payloads need {needed}: start it with --max-body-bytes {needed}",
        )


def tokens_per_message(scenario: Scenario) -> int:
    """Most draft tokens the edge sends in one request (its per-NAV cap)."""
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    return min(scenario.model.edge.max_draft_tokens, Limits(n_vocab=1).max_upload)


def acceptance_model(scenario: Scenario) -> AcceptanceModel:
    """The single edge's acceptance model, built as simulator.engine.simulate builds it."""
    model, profile = scenario.model, scenario.profile.profile
    spec = model.acceptance or profile.acceptance
    base_dir = scenario.base_dir if model.acceptance else scenario.profile.path.parent
    return AcceptanceModel(spec, base_dir)


def sampling_info(
    sampling: SamplingSpec | None, top_k: tuple[int, str] | None
) -> dict[str, Any] | None:
    """The manifest's `sampling` entry (None: greedy drafting and verification)."""
    if sampling is None or top_k is None:
        return None
    return {
        "temperature": float(sampling.temperature),
        "top_k": top_k[0],
        "top_k_from": top_k[1],
        "confidence": "max q (the top-1 probability of the draft distribution drawn from)",
        "seeds": "per (scenario seed, request): realrun.edge.drafts.EdgeSampling (edge draws, "
        "and the server session's seed)",
    }


EXACT_P_SKIP = (
    "downlink_scheme 'exact_p_then_topk' is simulated only: the testbed's edge-side "
    "verification sends the target's top-K at every verified position"
)
"""Why a PicoSpec variant whose answer carries exact p(x) is skipped in a sampling run."""


def edge_top_k(entry: PolicyEntry, sampling: SamplingSpec | None) -> int:
    """K of `entry`'s edge-side top-K verification on the testbed (PicoSpec), 0: the server
    verifies.

    The rule: a policy whose payload sets `downlink_top_k` = K > 0 (scheme
    "topk_every_position") verifies at the edge, by separate rejection sampling on the
    target's top-K (realrun.edge.topk_verify), when the run samples (`--temperature`).
    Greedy runs keep server verification for every policy: greedy verification keeps a draft
    iff it is the target's argmax, which is always in the top-K, so the edge would decide
    exactly as the server does. Synthetic acceptance never samples (`check_sampling`).
    """
    payload = entry.payload
    if sampling is None or not payload.downlink_top_k:
        return 0
    if payload.downlink_scheme != "topk_every_position":
        return 0
    return int(payload.downlink_top_k)


def entry_skip_reason(entry: PolicyEntry, sampling: SamplingSpec | None) -> str | None:
    """Why the testbed cannot run `entry` in this run (None: it can): `skip_reason`, and in
    a sampling run a top-K downlink whose scheme the testbed does not implement
    (`EXACT_P_SKIP`)."""
    reason = skip_reason(entry.name)
    if reason is not None or sampling is None or not entry.payload.downlink_top_k:
        return reason
    return EXACT_P_SKIP if entry.payload.downlink_scheme != "topk_every_position" else None


def check_edge_top_k(scenario: Scenario, sampling: SamplingSpec | None) -> None:
    """Refuse a `downlink_top_k` the server cannot send in a sampling run (one-line
    ConfigError naming the policy's field and the allowed range)."""
    from realrun.protocol import Limits  # loads msgpack (optional) when imported

    most = Limits(n_vocab=1).max_top_k
    for entry in scenario.policies:
        k = edge_top_k(entry, sampling)
        if k > most and entry_skip_reason(entry, sampling) is None:
            raise ConfigError(
                scenario.path,
                f"policies.{entry.label}.payload.downlink_top_k",
                f"edge-side top-K verification (--temperature) takes 1..{most} (the server's "
                f"largest top-K answer; got {k})",
            )


def verification(entry: PolicyEntry, sampling: SamplingSpec | None, acceptance: str) -> str:
    """Where and how `entry`'s drafts are verified in this run (results.csv's
    `verification` and the manifest's `testbed.verification`)."""
    k = edge_top_k(entry, sampling)
    if k:
        return f"edge: separate rejection sampling on the target's top-{k} (edge_topk)"
    if acceptance == "synthetic":
        return "server: the scenario's synthetic acceptance stream"
    if sampling is not None:
        return "server: speculative rejection sampling"
    return "server: greedy"
