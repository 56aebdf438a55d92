"""The profile: a versioned JSON description of one draft/target pair, edge, link and power.

Written by `pipesd calibrate`, shipped in `scenarios/profiles/`, validated on load. Every number
carries a provenance note saying where it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.acceptance_spec import Acceptance
from simulator.errors import ConfigError, from_validation_error
from simulator.inputs import load_json
from simulator.schema_types import NonNeg, Positive, Strict

SCHEMA_VERSION = 1


MAX_LATENCY_S = 86_400.0
"""Longest one-way latency or per-message overhead accepted (one day)."""
MAX_MBPS = 1e6
"""Fastest link accepted, Mbit/s (1 Tbit/s)."""
MIN_MBPS = 1e-6
"""Slowest link accepted, Mbit/s (1 bit/s): slower ones overflow transfer times."""
MIN_SPEED_FACTOR = 1e-6
"""Slowest compute factor accepted (a million times slower than the profile)."""

MAX_VOCAB = 10_000_000
"""Largest vocabulary accepted."""
MAX_ITEM_BYTES = 1024
"""Largest encoding of one token id, probability or index."""
MAX_MESSAGE_BYTES = 1_000_000_000
"""Largest per-message header, acknowledgement or hidden state."""
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
