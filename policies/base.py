"""The one interface every decision policy implements, shared by the simulator and the testbed.

A policy is told what happened on the edge (a token was drafted, a batch finished uploading, a
verification came back) and answers what to do next. It never reads a clock, sleeps or does I/O:
times reach it only as numbers inside the events, so a SimPy executor and a real-time executor
drive the very same object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum
from typing import NamedTuple


class Decision(IntEnum):
    """What the executor does after a token has been drafted."""

    CONTINUE = 0
    """Keep drafting; send nothing yet."""
    SEND = 1
    """Close a token batch: upload every drafted, unsent token now and keep drafting."""
    VERIFY = 2
    """Trigger a NAV: upload every unsent token and ask the cloud to verify the draft."""
    VERIFY_DROP_LAST = 3
    """As VERIFY, but first discard the token just drafted (llama.cpp's p_min rule)."""


class Mode(IntEnum):
    """How a policy generates tokens."""

    SPECULATIVE = 0
    """The edge drafts, the cloud verifies (every speculative-decoding policy)."""
    CLOUD_AUTOREGRESSIVE = 1
    """The cloud generates every token itself and streams them down (the reference)."""
    SPLIT_INFERENCE = 2
    """The edge runs the target's first layers, the cloud the rest, one token at a time."""


class RequestStart(NamedTuple):
    """A new request begins on the edge."""

    prompt_len: int
    max_new_tokens: int
    now_s: float


class VerifyOutcome(NamedTuple):
    """The cloud's answer to a NAV, as the edge sees it when the answer arrives.

    `verified` draft tokens were checked, the first `accepted` of them were accepted, and one
    more token (correction or bonus) came with the answer. `surviving` tokens drafted while the
    NAV was pending remain speculative (they were kept because the whole draft was accepted and
    the edge's guess of the bonus token was right); `surviving_sent` of them are already uploaded.
    """

    verified: int
    accepted: int
    surviving: int
    surviving_sent: int
    now_s: float


class CostHints(NamedTuple):
    """True per-round costs, revealed only to oracle policies (upper bounds)."""

    alpha_s: float
    beta_s: float
    gamma_s: float
    round_trip_s: float = 0.0
    """From a NAV's last byte leaving the edge to its answer arriving: latency both ways,
    verification and the answer's transmission."""


class Policy(ABC):
    """Base class: the callbacks an executor invokes, in time order, for one edge.

    Subclasses override what they need. The defaults describe a policy that drafts until it
    says VERIFY and never drafts while a verification is pending.
    """

    mode: Mode = Mode.SPECULATIVE
    drafts_while_pending: bool = False
    """Whether the edge keeps drafting while a NAV is outstanding (proactive drafting)."""
    is_oracle: bool = False
    """Oracles are told the future acceptance run through `on_round_start`."""
    uses_fleet_plan: bool = False
    """The executor plans draft lengths and cloud batches for the whole fleet (DiP-SD) and
    gives each edge's policy its length through `on_fleet_plan`."""
    tuner_steps: int = 0
    """Online-tuner steps (a BO tell + ask) the policy has run so far, counted by the policy
    itself: each costs edge compute, which the executor charges after `on_result` (the only
    callback that tunes): the simulator `tuner_step_s` per step, the testbed the measured time."""
    tuner_step_s: float = 0.0
    """One tuner step's compute on the reference edge (compute factor 1), a profiled cost the
    simulator divides by the edge's compute factor (the policy never reads a clock)."""

    def start_request(self, event: RequestStart) -> None:  # noqa: B027 - optional hook
        """A request starts; reset per-request state (keep what is learned across requests)."""

    @abstractmethod
    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        """A token was drafted with top-1 probability `confidence` in `draft_time_s` seconds.

        `pending` says whether a NAV is outstanding while this token was drafted. While one is,
        VERIFY means "stop drafting; verify these tokens as soon as the outstanding answer
        allows" and the executor waits for that answer.
        """

    def on_upload(self, n_tokens: int, duration_s: float) -> None:  # noqa: B027 - optional hook
        """A batch of `n_tokens` draft tokens was answered `duration_s` seconds after it was sent:
        what an edge can measure (both ways' latency and overheads included, the cloud's own
        queueing and compute excluded), in the simulator as on the testbed. Reported only for
        uploads handed over when no earlier message was awaiting its answer, so a duration
        never includes waiting behind an earlier batch (clean samples for α, β fits)."""

    def startup_probe_sizes(self) -> tuple[int, ...]:
        """Token counts of probe uploads to send once when the edge session starts."""
        return ()

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        """The answer to the outstanding NAV arrived; say what to do with surviving tokens.

        The answer matters only when `outcome.surviving > 0`: CONTINUE drafting on top of them,
        SEND the unsent ones, or VERIFY them at once.
        """
        return Decision.CONTINUE

    def on_round_start(self, accept_run: int, hints: CostHints) -> Decision:
        """Oracles only: the next `accept_run` positions will be accepted, the one after not.

        Called whenever drafting starts afresh; VERIFY asks for a NAV without drafting at all.
        """
        return Decision.CONTINUE

    def on_fleet_plan(self, draft_len: int) -> None:
        """Policies with `uses_fleet_plan` only: this edge's draft length in the fleet plan,
        given once before the first request."""
        raise NotImplementedError(f"{type(self).__name__} does not take a fleet plan")

    def given_fleet_plan(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Policies with `uses_fleet_plan` only: a fixed fleet plan (batch index and draft
        length per edge) the executor runs instead of optimising one; None: optimise."""
        return None

    def split_edge_fraction(self, profiled: float) -> float:
        """Split inference only: the share of the target's layers the edge runs, given the
        profile's (`profiled`); the default keeps the profile's."""
        return profiled

    def state(self) -> dict[str, float]:
        """A snapshot of tunable state (thresholds, estimates) for logs and results."""
        return {}
