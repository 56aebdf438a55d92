"""DiP-SD's edge policy: a fixed draft length per user, given by the fleet plan.

Each user drafts its planned length and waits for the answer (as Vanilla); the cloud verifies
users in the plan's batches, in order (`simulator/dipsd_plan.py` computes the plan with
`policies/dipsd/optimiser.py`, the executor gives each edge its `draft_len`: `on_fleet_plan`).
"""

from __future__ import annotations

from pydantic import Field

from policies.baselines.fixed import Vanilla, VanillaParams


class DipSDParams(VanillaParams):
    """DiP-SD's per-user draft length (overridden by the plan when the executor makes one)."""

    draft_len: int = Field(4, ge=1, le=256, description="draft tokens per NAV (set by the plan)")


class DipSD(Vanilla):
    """Vanilla stop-and-wait drafting with the plan's length; its batching lives in the cloud."""

    uses_fleet_plan = True

    def on_fleet_plan(self, draft_len: int) -> None:
        """The plan's draft length for this edge replaces the configured one."""
        self.params = self.params.model_copy(update={"draft_len": draft_len})
