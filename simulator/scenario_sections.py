"""The scenario file's shape as pydantic models (its sections, edge groups, policy entries)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.batching import DEFAULT_BATCH_WINDOW_S, DEFAULT_MAX_BATCH
from policies.params import PolicyParams
from simulator.acceptance_spec import Acceptance
from simulator.profile import MAX_LATENCY_S, MAX_VOCAB, MIN_SPEED_FACTOR, LatencySeconds, Mbps
from simulator.schema_types import NonNeg


class Strict(BaseModel):
    """Unknown keys are errors, types are not coerced ("20" is no number); instances are
    immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EdgeSection(Strict):
    """The edge device."""

    compute_factor: float = Field(
        1.0, ge=MIN_SPEED_FACTOR, le=100.0, description="draft speed vs profile"
    )
    max_draft_tokens: int = Field(256, ge=1, le=4096, description="safety cap per draft")
    compute_trace: str | None = Field(None, description="`t_s, factor` CSV: draft x factor(t)")
    compute_trace_repeat: bool = Field(True, description="loop the trace (else hold last)")
    prefill_compute_trace: str | None = Field(
        None,
        description="`t_s, factor` CSV: the draft's prompt prefill x factor(t) apart from its "
        "steps (a testbed replay measures both; unset: compute_trace); edges of a group with its "
        "own compute_trace prefill at that",
    )


class LinkSection(Strict):
    """Overrides of the profile's link; traces are `t_s, mbps` CSV files (step functions)."""

    uplink_mbps: Mbps | None = None
    downlink_mbps: Mbps | None = None
    one_way_latency_s: LatencySeconds | None = None
    uplink_overhead_s: LatencySeconds | None = None
    downlink_overhead_s: LatencySeconds | None = None
    burst_bytes: NonNeg | None = None
    uplink_trace: str | None = None
    downlink_trace: str | None = None
    trace_repeat: bool = Field(True, description="loop a trace past its end (else hold last)")
    uplink_jitter: str | None = Field(
        None,
        description="`jitter_s` CSV: each uplink message arrives one sample (drawn at random, "
        "seeded) later, in send order (simulator/link_jitter.py); every edge",
    )


class PromptsSection(Strict):
    """The request stream of the edge: `count` requests back to back (closed loop)."""

    count: int = Field(ge=1, le=1_000_000)
    prompt_len: int = Field(ge=1, le=1_000_000)
    max_new_tokens: int = Field(ge=2, le=1_000_000)
    family: Literal["default", "humaneval", "reference"] = Field(
        "default",
        description="the testbed's prompt texts (models.prompts.FAMILIES), request r taking "
        "the family's prompt r (cycling); the simulator uses prompt_len alone",
    )
    split: Literal["all", "fit", "heldout"] = Field(
        "all", description="which of the family's prompts (models.prompts.SPLITS)"
    )


class PayloadSection(Strict):
    """What each draft token carries uplink, and what the cloud's answer carries down."""

    kind: Literal["token_id", "token_prob", "topk", "full"] = "full"
    top_k: int = Field(8, ge=1, le=MAX_VOCAB, description="entries per token for kind = topk")
    downlink_top_k: int = Field(
        0,
        ge=0,
        le=MAX_VOCAB,
        description="target top-K sent down per verified position (PicoSpec); 0: none",
    )
    downlink_scheme: Literal["topk_every_position", "exact_p_then_topk"] = Field(
        "topk_every_position",
        description="with downlink_top_k: the top-K at every verified position and the bonus "
        "one, or each verified draft token's exact p(x) plus the top-K at the first rejected "
        "(or bonus) position only",
    )


class CloudSection(Strict):
    """How the cloud schedules work from many edges."""

    max_batch: int = Field(
        DEFAULT_MAX_BATCH, ge=1, le=4096, description="NAVs verified together (1: FCFS)"
    )
    compute_factor: float = Field(
        1.0,
        ge=MIN_SPEED_FACTOR,
        le=1e6,
        allow_inf_nan=False,
        description="target speed relative to the profile",
    )
    batch_window_s: float = Field(
        DEFAULT_BATCH_WINDOW_S,
        ge=0.0,
        le=MAX_LATENCY_S,
        allow_inf_nan=False,
        description="wait this long to fill a batch",
    )
    compute_trace: str | None = Field(None, description="`t_s, factor` CSV: target x factor(t)")
    compute_trace_repeat: bool = Field(True, description="loop the trace (else hold last)")


class EdgeGroup(Strict):
    """`count` edges alike; unset fields fall back to [edge], [link] and [prompts].

    `profile` gives the group its own draft model, power, payload sizes, acceptance and link
    defaults (the cloud keeps the scenario's target model); `compute_spread` draws each edge's
    compute factor uniformly in factor x (1 +- spread);
    `arrival = "poisson"` makes requests arrive at `rate_per_s` per edge (open loop) instead of
    back to back; `start_spread_s` staggers the edges' first requests uniformly over that span.
    """

    label: str = ""
    count: int = Field(1, ge=1, le=100_000)
    profile: str | None = Field(None, description="this group's own profile (draft, power, link)")
    compute_factor: float | None = Field(None, ge=MIN_SPEED_FACTOR, le=100.0, allow_inf_nan=False)
    compute_spread: float = Field(0.0, ge=0.0, lt=1.0)
    compute_trace: str | None = Field(None, description="this group's draft speed trace")
    uplink_mbps: Mbps | None = None
    downlink_mbps: Mbps | None = None
    one_way_latency_s: LatencySeconds | None = None
    uplink_trace: str | None = None
    downlink_trace: str | None = None
    requests: int | None = Field(None, ge=1, le=1_000_000)
    arrival: Literal["closed", "poisson"] = "closed"
    rate_per_s: float | None = Field(None, gt=0.0, le=1e6, allow_inf_nan=False)
    start_spread_s: float = Field(0.0, ge=0.0, le=MAX_LATENCY_S, allow_inf_nan=False)


class PolicyEntry(Strict):
    """One policy to run: registry name, a unique label, validated parameters, and what its
    messages carry (the scenario's [payload], with the entry's `payload` table over it)."""

    name: str
    label: str
    params: PolicyParams
    payload: PayloadSection = PayloadSection()


class ScenarioModel(Strict):
    """The TOML file's shape (policies are validated separately, per policy name)."""

    name: str
    description: str = ""
    profile: str
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    reference_policy: str = "vanilla"
    edge: EdgeSection = EdgeSection()
    link: LinkSection = LinkSection()
    prompts: PromptsSection
    payload: PayloadSection = PayloadSection()
    acceptance: Annotated[Acceptance | None, Field(discriminator="kind")] = None
    cloud: CloudSection = CloudSection()
    edge_groups: list[EdgeGroup] = Field(default_factory=list)
    policies: list[dict[str, Any]] = Field(min_length=1)
