"""The oracle: an upper bound that knows every acceptance outcome in advance.

It drafts exactly the run of tokens that will be accepted (the cloud's answer then carries the
correction for the first rejected position), never drafts a token that will be thrown away,
and uploads the run with the DP's optimal batches computed from the true α, β, γ.
"""

from __future__ import annotations

from pydantic import Field

from policies.base import CostHints, Decision, Policy, VerifyOutcome
from policies.batch_plan import batch_boundaries, plan_batches
from policies.params import PolicyParams


class OracleParams(PolicyParams):
    """Oracle settings."""

    max_draft_len: int = Field(256, ge=1, le=1024, description="cap on one draft's length")
    pipeline: bool = True


class Oracle(Policy):
    """Draft the accepted run, upload it on the optimal plan, verify exactly at its end."""

    is_oracle = True

    def __init__(self, params: OracleParams, seed: int) -> None:
        self.params = params
        self._target = 0
        self._drafted = 0
        self._boundaries: frozenset[int] = frozenset()

    def on_round_start(self, accept_run: int, hints: CostHints) -> Decision:
        self._target = min(accept_run, self.params.max_draft_len)
        self._drafted = 0
        if self._target == 0:
            return Decision.VERIFY
        if self.params.pipeline:
            sizes = plan_batches(self._target, hints.alpha_s, hints.beta_s, hints.gamma_s)
            self._boundaries = frozenset(batch_boundaries(sizes))
        return Decision.CONTINUE

    def on_draft(self, confidence: float, draft_time_s: float, pending: bool) -> Decision:
        self._drafted += 1
        if self._drafted >= self._target:
            return Decision.VERIFY
        if self._drafted in self._boundaries:
            return Decision.SEND
        return Decision.CONTINUE

    def on_result(self, outcome: VerifyOutcome) -> Decision:
        self._drafted = 0
        return Decision.CONTINUE
