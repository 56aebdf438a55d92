"""PicoSpec's edge policy: an asynchronous draft/verify pipeline with latency-aware truncation.

The edge drafts block k+1 while block k is being verified; if block k is fully accepted and
the edge's guess of the bonus token was right, block k+1 is kept, else it is discarded and
drafting restarts from the correction (the executor does the bookkeeping). Truncation [?: the
paper's exact rule is not published]: a block is submitted early when its drafting time
exceeds `truncate_ratio` x the measured NAV round trip (so the cloud does not sit idle), and
a block drafted while the previous one was pending is submitted as soon as it survives.
Uplink payload (token + its draft probability) and downlink top-K are scenario `[payload]`
settings; `policies/picospec/sparse_verify.py` computes what K costs in distribution error.
"""

from __future__ import annotations

from pydantic import Field

from policies.base import Decision, Policy, RequestStart, VerifyOutcome
from policies.params import PolicyParams
from policies.pipesd.estimators import ExponentialAverage


class PicoSpecParams(PolicyParams):
    """PicoSpec's parameters (draft length 4 as in the paper's setup)."""

    draft_len: int = Field(4, ge=1, le=256, description="tokens per block")
    truncate: bool = Field(True, description="latency-aware truncation on/off")
    truncate_ratio: float = Field(1.0, gt=0.0, description="block drafting time / round trip")
    initial_round_trip_s: float = Field(0.1, gt=0.0, description="round-trip prior")


class PicoSpec(Policy):
    """Draft ahead while verifying; submit blocks at draft_len or early when drafting runs long."""

    drafts_while_pending = True

    def __init__(self, params: PicoSpecParams, seed: int) -> None:
        self.params = params
        self.round_trip = ExponentialAverage(params.initial_round_trip_s, weight=0.2)
        self._block = 0
        self._block_time_s = 0.0
        self._clock_s = 0.0
        self._submitted_s = 0.0
        self._deferred = False

    def start_request(self, event: RequestStart) -> None:
        self._block = 0
        self._block_time_s = 0.0
        self._clock_s = event.now_s
        self._deferred = False

    def _submit(self) -> Decision:
        self._submitted_s = self._clock_s
        self._block = 0
        self._block_time_s = 0.0
        return Decision.VERIFY

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._clock_s += draft_time_s
        self._block += 1
        self._block_time_s += draft_time_s
        long_block = (
            self.params.truncate
            and self._block_time_s >= self.params.truncate_ratio * self.round_trip.value
        )
        if self._block >= self.params.draft_len or (long_block and not pending):
            if pending:
                self._deferred = True
                return Decision.VERIFY
            return self._submit()
        return Decision.CONTINUE

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        self.round_trip.observe(max(outcome.now_s - self._submitted_s, 0.0))
        self._clock_s = outcome.now_s
        deferred, self._deferred = self._deferred, False
        if outcome.surviving:
            self._block = outcome.surviving
            if deferred or self.params.truncate:
                return self._submit()
            return Decision.CONTINUE
        self._block = 0
        self._block_time_s = 0.0
        return Decision.CONTINUE

    def state(self) -> dict[str, float]:
        return {"round_trip_s": self.round_trip.value}
