"""The oracle: a schedule that knows every acceptance outcome in advance.

It never drafts a token that will be rejected or thrown away: the run of accepted positions
before the next rejection is covered by NAVs whose answers bring the bonus tokens and, last,
the correction. How to split the run is chosen by a small DP over the true costs: a NAV of k
tokens costs their pipelined upload (the batch DP with the true α, β, γ) plus a round trip,
and covers k + 1 positions (its bonus token included), so at low bandwidth many short NAVs
(each bonus saves an upload) beat one long one. Uploads use the batch DP's optimal plan.

It is the best schedule among those that do not draft while a NAV is pending. Policies that
do (EdgeLLM, PipeSD, PicoSpec) overlap uploads with round trips and can beat it when uploads
cost more than round trips. `simulator/oracle_bound.py` bounds every policy, these included
(a lower bound on each request's duration, tested against all of them; docs/reproduction.md).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from policies.base import CostHints, Decision, Policy, VerifyOutcome
from policies.params import PolicyParams
from policies.pipesd.batch_plan import batch_boundaries, plan_batches, plan_finish_time


@lru_cache(maxsize=65536)
def nav_cost(k: int, hints: CostHints) -> float:
    """Time from the start of drafting to the answer of a NAV carrying k draft tokens."""
    if k == 0:
        return hints.alpha_s + hints.round_trip_s
    sizes = plan_batches(k, hints.alpha_s, hints.beta_s, hints.gamma_s)
    return plan_finish_time(sizes, hints.alpha_s, hints.beta_s, hints.gamma_s) + hints.round_trip_s


@lru_cache(maxsize=65536)
def first_chunk(accept_run: int, hints: CostHints) -> int:
    """Draft tokens in the first NAV of the cheapest split of a run.

    The run's `accept_run` accepted positions and the rejected one after them are covered by
    NAVs of k_i tokens (k_i + 1 positions each, the last one's extra position being the
    correction): minimise sum cost(k_i) subject to sum (k_i + 1) = accept_run + 1.
    """
    positions = accept_run + 1
    costs = [nav_cost(k, hints) for k in range(positions)]
    best = [0.0] + [float("inf")] * positions
    choice = [0] * (positions + 1)
    for n in range(1, positions + 1):
        for k in range(n):
            value = costs[k] + best[n - k - 1]
            if value < best[n]:
                best[n], choice[n] = value, k
    return choice[positions]


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
        self._target = min(first_chunk(accept_run, hints), self.params.max_draft_len)
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
