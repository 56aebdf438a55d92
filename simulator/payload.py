"""Payload models: how many bytes a draft token, a prompt, or a cloud answer takes on the wire."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.profile import PayloadProfile
from simulator.scenario_sections import PayloadSection

MSGPACK_ARRAY_HEADER_BYTES = 5


@dataclass(frozen=True, slots=True)
class Payload:
    """Byte sizes for one scenario."""

    per_draft_token: int
    message_header: int
    token_id: int
    per_answer_position: int = 0
    """Bytes per verified position in an answer (the target's top-K, PicoSpec); 0: none."""
    ack_bytes: int = 0
    """Uplink bytes per message sent once its answer has arrived (TCP ACKs of the answer)."""
    per_answer_exact: int = 0
    """Bytes per verified position for the target's exact p(x) of the draft token; when set,
    the top-K (`per_answer_position`) comes once per answer instead of at every position."""

    def batch_bytes(self, n_tokens: int) -> int:
        """An uplink message carrying `n_tokens` draft tokens."""
        return self.message_header + n_tokens * self.per_draft_token

    def prompt_bytes(self, prompt_len: int) -> int:
        """The prompt upload (token ids)."""
        return self.message_header + prompt_len * self.token_id

    def result_bytes(self, verified: int = 0) -> int:
        """A verification answer: accepted count and correction/bonus token, plus the target's
        top-K for each verified position and the bonus position when configured (or, with
        `per_answer_exact`, p(x) per verified position and one top-K)."""
        if self.per_answer_exact:
            sparse = verified * self.per_answer_exact + self.per_answer_position
        else:
            sparse = (verified + 1) * self.per_answer_position
        return self.message_header + 2 * self.token_id + sparse

    def stream_token_bytes(self) -> int:
        """One token streamed down by cloud-only generation."""
        return self.message_header + self.token_id


def row_probability_bytes(profile: PayloadProfile) -> int:
    """Bytes per probability in a full draft distribution on the wire: the profile's packed
    row width when it states one, else its `probability_bytes` (one msgpack number each)."""
    return profile.row_probability_bytes or profile.probability_bytes


def payload_for(profile: PayloadProfile, section: PayloadSection) -> Payload:
    """Bytes per draft token for the scenario's payload kind.

    token_id: the id alone; token_prob: id + its draft probability (PicoSpec's uplink);
    topk: id + K (index, probability) pairs; full: id + the whole draft distribution
    (PipeSD's setting, vocabulary x bytes per probability). With `downlink_top_k` the answer
    carries the target's top-K at every verified position, or (`downlink_scheme =
    "exact_p_then_topk"`) each verified token's exact p(x) and one top-K, at the first
    rejected or the bonus position (PicoSpec's two protocol variants).
    """
    ident, prob = profile.token_id_bytes, profile.probability_bytes
    per_token = {
        "token_id": ident,
        "token_prob": ident + prob,
        "topk": ident + MSGPACK_ARRAY_HEADER_BYTES + section.top_k * (profile.index_bytes + prob),
        "full": ident
        + MSGPACK_ARRAY_HEADER_BYTES
        + profile.vocab_size * row_probability_bytes(profile),
    }[section.kind]
    per_answer = (
        MSGPACK_ARRAY_HEADER_BYTES + section.downlink_top_k * (profile.index_bytes + prob)
        if section.downlink_top_k
        else 0
    )
    exact = prob if per_answer and section.downlink_scheme == "exact_p_then_topk" else 0
    return Payload(
        per_token,
        profile.message_header_bytes,
        ident,
        per_answer,
        profile.message_ack_bytes,
        exact,
    )
