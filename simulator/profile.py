"""The profile: a versioned JSON description of one draft/target pair, edge, link and power.

Written by `pipesd calibrate`, shipped in `scenarios/profiles/`, validated on load. Every number
carries a provenance note saying where it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import ConfigError, from_validation_error
from simulator.inputs import load_json

SCHEMA_VERSION = 1


class Strict(BaseModel):
    """Base for schema parts: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_MAGNITUDE = 1e12
"""Upper bound of every profile number without a tighter physical one: large enough for any
real coefficient, small enough that sums and products of them stay finite."""
MAX_LATENCY_S = 86_400.0
"""Longest one-way latency or per-message overhead accepted (one day)."""
MAX_MBPS = 1e6
"""Fastest link accepted, Mbit/s (1 Tbit/s)."""
MIN_MBPS = 1e-6
"""Slowest link accepted, Mbit/s (1 bit/s): slower ones overflow transfer times."""
MIN_SPEED_FACTOR = 1e-6
"""Slowest compute factor accepted (a million times slower than the profile)."""

NonNeg = Annotated[float, Field(ge=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
MAX_VOCAB = 10_000_000
"""Largest vocabulary accepted."""
MAX_ITEM_BYTES = 1024
"""Largest encoding of one token id, probability or index."""
MAX_MESSAGE_BYTES = 1_000_000_000
"""Largest per-message header, acknowledgement or hidden state."""
Finite = Annotated[float, Field(allow_inf_nan=False)]
LatencySeconds = Annotated[float, Field(ge=0.0, le=MAX_LATENCY_S, allow_inf_nan=False)]
Mbps = Annotated[float, Field(ge=MIN_MBPS, le=MAX_MBPS, allow_inf_nan=False)]


class DraftLatency(Strict):
    """Edge draft model on the reference edge (compute factor 1).

    prefill(L) = prefill_base_s + prefill_per_token_s * L;
    decode(ctx) = decode_base_s + decode_per_context_token_s * ctx, per drafted token.
    """

    prefill_base_s: NonNeg
    prefill_per_token_s: NonNeg
    decode_base_s: Positive
    decode_per_context_token_s: NonNeg = 0.0

    def prefill_s(self, prompt_len: int) -> float:
        """Time to prefill a prompt of `prompt_len` tokens."""
        return self.prefill_base_s + self.prefill_per_token_s * prompt_len

    def decode_s(self, context_len: int) -> float:
        """Time to draft one token with `context_len` tokens already in context."""
        return self.decode_base_s + self.decode_per_context_token_s * context_len


class TargetLatency(Strict):
    """Cloud target model: one forward pass over new positions of one or more sequences.

    forward = forward_base_s + forward_per_token_s * sum(new positions)
            + forward_per_context_token_s * sum(context) + forward_per_extra_sequence_s * (b - 1)
            + forward_per_position_context_s * sum(new positions x context, per sequence).
    The last term is attention's cost where it is compute-bound (a CPU target): every new
    position attends over the whole context.
    A NAV of m draft tokens is a forward over m + 1 positions (last committed token + draft);
    an autoregressive step is a forward over one position; prefill is its own model,
    prefill(L) = prefill_base_s + prefill_per_token_s * L + prefill_per_token_squared_s * L^2
    (the last term: attention over the prompt, where it is compute-bound).
    """

    prefill_base_s: NonNeg
    prefill_per_token_s: NonNeg
    prefill_per_token_squared_s: NonNeg = 0.0
    forward_base_s: Positive
    forward_per_token_s: NonNeg = 0.0
    forward_per_context_token_s: NonNeg = 0.0
    forward_per_extra_sequence_s: NonNeg = 0.0
    forward_per_position_context_s: NonNeg = 0.0

    def prefill_s(self, prompt_len: int) -> float:
        """Time to prefill a prompt of `prompt_len` tokens."""
        return (
            self.prefill_base_s
            + self.prefill_per_token_s * prompt_len
            + self.prefill_per_token_squared_s * prompt_len * prompt_len
        )

    def faster(self, factor: float) -> TargetLatency:
        """The same model on hardware `factor` times as fast (every time divided by it)."""
        if factor == 1.0:
            return self
        return self.model_copy(update={k: v / factor for k, v in self.model_dump().items()})

    def forward_s(
        self,
        new_positions: int,
        context_len: int,
        batch: int = 1,
        position_context: float | None = None,
    ) -> float:
        """Time of one forward pass (summed positions and context over the batch).

        `position_context`: the sum over sequences of positions x context (default: one
        sequence's, new_positions x context_len).
        """
        if position_context is None:
            position_context = new_positions * context_len
        return (
            self.forward_base_s
            + self.forward_per_token_s * new_positions
            + self.forward_per_context_token_s * context_len
            + self.forward_per_extra_sequence_s * (batch - 1)
            + self.forward_per_position_context_s * position_context
        )


class LinkProfile(Strict):
    """The edge-cloud link: bandwidths, one-way propagation latency, per-message overheads."""

    uplink_mbps: Mbps
    downlink_mbps: Mbps
    one_way_latency_s: LatencySeconds
    uplink_overhead_s: LatencySeconds = Field(
        description="α: per-message start-up cost, edge to cloud"
    )
    downlink_overhead_s: LatencySeconds
    burst_bytes: NonNeg = Field(
        0.0, description="token bucket per direction: bytes passing at once after idling"
    )


class PowerProfile(Strict):
    """Power and energy coefficients."""

    edge_busy_w: NonNeg
    edge_idle_w: NonNeg
    gpu_active_w: NonNeg = Field(description="GPU power while prefilling or verifying")
    gpu_idle_w: NonNeg
    radio_uplink_j_per_byte: NonNeg
    radio_downlink_j_per_byte: NonNeg


class BetaConfidence(Strict):
    """Draft top-1 probability ~ Beta(a, b)."""

    kind: Literal["beta"]
    a: Positive
    b: Positive


class HistogramConfidence(Strict):
    """Draft top-1 probability drawn from a histogram on [0, 1] (uniform within a bin)."""

    kind: Literal["histogram"]
    edges: list[Finite] = Field(min_length=2)
    weights: list[NonNeg] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> HistogramConfidence:
        if len(self.weights) != len(self.edges) - 1:
            raise ValueError("weights must have one entry fewer than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        if self.edges[0] < 0.0 or self.edges[-1] > 1.0:
            raise ValueError("edges must lie in [0, 1]")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return self


class ConstantConfidence(Strict):
    """Every draft token has the same top-1 probability (uninformative confidence)."""

    kind: Literal["constant"]
    value: Annotated[float, Field(gt=0.0, le=1.0)]


Confidence = Annotated[
    BetaConfidence | HistogramConfidence | ConstantConfidence, Field(discriminator="kind")
]


class PowerCurve(Strict):
    """P(accept | c) = c ** exponent (exponent 1: a perfectly calibrated draft)."""

    kind: Literal["power"]
    exponent: Positive


class TableCurve(Strict):
    """P(accept | c) piecewise constant over confidence bins."""

    kind: Literal["table"]
    edges: list[Finite] = Field(min_length=2)
    values: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TableCurve:
        if len(self.values) != len(self.edges) - 1:
            raise ValueError("values must have one entry fewer than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        if self.edges[0] < 0.0 or self.edges[-1] > 1.0:
            raise ValueError("edges must lie in [0, 1]")
        return self


AcceptCurve = Annotated[PowerCurve | TableCurve, Field(discriminator="kind")]


class IIDAcceptance(Strict):
    """Each draft token is accepted with probability `rate`, independently of its confidence."""

    kind: Literal["iid"]
    rate: Annotated[float, Field(ge=0.0, lt=1.0)]
    confidence: Confidence = ConstantConfidence(kind="constant", value=0.9)


class CalibratedAcceptance(Strict):
    """Confidence drawn from a fitted distribution, acceptance from P(accept | confidence)."""

    kind: Literal["calibrated"]
    confidence: Confidence
    p_accept: AcceptCurve


class ReplayAcceptance(Strict):
    """Replay recorded (confidence, accepted) sequences from a CSV file, or a CSV.gz trace
    (path relative to the file that names it): columns sequence, position, confidence,
    accepted; with `block` > 0, a moving-block bootstrap of them."""

    kind: Literal["replay"]
    trace: str
    block: int = Field(
        0,
        ge=0,
        description="0: replay whole sequences; L > 0: moving-block bootstrap of L positions",
    )
    order: Literal["random", "request"] = Field(
        "random",
        description="whole sequences: from a random one per request, or request r from sequence "
        "r (cycling), e.g. the trace of the very prompts a testbed run used, in its order",
    )

    @model_validator(mode="after")
    def _whole_sequences_in_order(self) -> ReplayAcceptance:
        if self.order == "request" and self.block:
            raise ValueError("order = 'request' replays whole sequences (block must be 0)")
        return self


class HmmAcceptance(Strict):
    """A hidden Markov (regime-switching) model fitted to real traces by EM
    (`calibrate.acceptance_hmm`): K regimes follow a Markov chain (`initial` at a request's
    first position, `transition` K x K); in regime k a position falls in confidence bin b and
    is accepted or not with probability `emission[k][b]` = [P(b, rejected), P(b, accepted)];
    its confidence is drawn from the bin's quantiles `within[b]` (increasing, inside the bin).
    `sequence_lengths`: the fitting sequences' lengths (their outputs ended there); a request
    runs on past a length drawn from them as a new sequence from `initial`, as a replay
    continues into the next trace (None: one sequence per request). `source` says where it
    was fitted from."""

    kind: Literal["hmm"]
    edges: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=2)
    within: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]] = Field(min_length=1)
    initial: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(min_length=1)
    transition: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]
    emission: list[list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]]
    sequence_lengths: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> HmmAcceptance:
        bins, states = len(self.edges) - 1, len(self.initial)
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        if len(self.within) != bins or any(
            len(row) < 2 or sorted(row) != row for row in self.within
        ):
            raise ValueError("within must hold, per bin, at least 2 non-decreasing quantiles")
        if len(self.transition) != states or any(len(r) != states for r in self.transition):
            raise ValueError(f"transition must be {states} x {states} (one row per state)")
        if len(self.emission) != states or any(
            len(r) != bins or any(len(c) != 2 for c in r) for r in self.emission
        ):
            raise ValueError(f"emission must be {states} x {bins} x 2 (state, bin, verdict)")
        sums = [sum(self.initial)] + [sum(r) for r in self.transition]
        sums += [sum(sum(c) for c in r) for r in self.emission]
        if any(abs(total - 1.0) > 1e-6 for total in sums):
            raise ValueError("initial, each transition row and each state's emission must sum to 1")
        return self


Acceptance = Annotated[
    IIDAcceptance | CalibratedAcceptance | ReplayAcceptance | HmmAcceptance,
    Field(discriminator="kind"),
]


class PayloadProfile(Strict):
    """Sizes that turn a draft token into bytes on the wire (msgpack encoding by default)."""

    vocab_size: int = Field(ge=2, le=MAX_VOCAB)
    token_id_bytes: int = Field(5, ge=1, le=MAX_ITEM_BYTES)
    probability_bytes: int = Field(
        9, ge=1, le=MAX_ITEM_BYTES, description="one probability (msgpack float64: 9)"
    )
    index_bytes: int = Field(
        5, ge=1, le=MAX_ITEM_BYTES, description="one vocabulary index in a sparse list"
    )
    row_probability_bytes: Literal[2, 4, 8] | None = Field(
        None,
        description="one probability of a full draft distribution sent as a packed row "
        "(float16/32/64, as the testbed sends them); None: probability_bytes",
    )
    message_header_bytes: int = Field(64, ge=0, le=MAX_MESSAGE_BYTES)
    message_ack_bytes: int = Field(
        0,
        ge=0,
        le=MAX_MESSAGE_BYTES,
        description="uplink bytes per message that go only after its answer arrives (the "
        "edge's TCP ACKs of the answer), beside message_header_bytes",
    )


class ModelInfo(Strict):
    """What the draft or target model is (names and sizes, for records and figures)."""

    name: str
    parameters_b: NonNeg = 0.0
    quantisation: str = ""


class Models(Strict):
    """The draft/target pair this profile describes."""

    draft: ModelInfo
    target: ModelInfo


class Provenance(Strict):
    """Where the numbers come from: a summary, then one note per field (dotted path)."""

    source: str
    created: str
    command: str = ""
    machine: dict[str, str] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    notes: dict[str, str] = Field(default_factory=dict)


class SplitProfile(Strict):
    """Split inference: the first `edge_fraction` of the target's layers run on the edge.

    Per generated token the edge runs its share of one forward (`edge_forward_s` is the whole
    target's forward for one position on the reference edge), sends that position's hidden
    state (`hidden_state_bytes`) up, and the cloud runs the remaining layers.
    """

    edge_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    edge_forward_s: Positive
    edge_prefill_per_token_s: NonNeg
    hidden_state_bytes: int = Field(ge=1, le=MAX_MESSAGE_BYTES)


class ThermalProfile(Strict):
    """An edge that throttles under sustained load (a phone): a first-order heat state in
    [0, 1] rises towards 1 with time constant `heat_tau_s` while the edge computes and falls
    towards 0 with `cool_tau_s` while it idles; the edge runs at 1 - depth x heat of its speed
    (simulator/compute.py)."""

    depth: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
    heat_tau_s: Annotated[float, Field(gt=0.0, le=MAX_LATENCY_S, allow_inf_nan=False)]
    cool_tau_s: Annotated[float, Field(gt=0.0, le=MAX_LATENCY_S, allow_inf_nan=False)]


class Profile(Strict):
    """A complete, validated profile."""

    schema_version: Literal[1]
    name: str
    models: Models
    draft_latency: DraftLatency
    target_latency: TargetLatency
    link: LinkProfile
    power: PowerProfile
    acceptance: Acceptance
    payload: PayloadProfile
    provenance: Provenance
    split: SplitProfile | None = None
    edge_thermal: ThermalProfile | None = Field(
        None, description="the edge throttles under sustained drafting (off: constant speed)"
    )
    topk_trace: str | None = Field(
        None,
        description="an acceptance trace recorded with the target's top-K (path relative to "
        "the profile): the acceptance and distribution error of a policy verifying against a "
        "top-K downlink (payload.downlink_top_k); None: exact acceptance whatever K",
    )


class LoadedProfile(BaseModel):
    """A profile plus the file it came from and the hash of its bytes."""

    model_config = ConfigDict(frozen=True)

    profile: Profile
    path: Path
    sha256: str


def load_profile(path: str | Path) -> LoadedProfile:
    """Read and validate a profile file (a regular file, bounded in size and nesting, finite
    numbers of JSON's own types: no "20" or true for a number); bad input raises ConfigError."""
    path = Path(path)
    data, raw_bytes = load_json(path, "profile")
    if not isinstance(data, dict):
        raise ConfigError(path, "", "a profile must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            path, "schema_version", f"unsupported value {version!r} (allowed: {SCHEMA_VERSION})"
        )
    try:
        profile = Profile.model_validate(data, strict=True)
    except ValidationError as exc:
        raise from_validation_error(path, exc, Profile) from None
    return LoadedProfile(profile=profile, path=path, sha256=hashlib.sha256(raw_bytes).hexdigest())


def dump_profile(profile: Profile) -> str:
    """The canonical JSON text of a profile (what `calibrate` writes)."""
    return json.dumps(profile.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
