"""DiP-SD's edge policy: a fixed draft length per user, given by the fleet plan.

Each user drafts its planned length and waits for the answer (as Vanilla); the cloud verifies
users in the plan's batches, in order (`simulator/dipsd_plan.py` computes the plan with
`policies/dipsd/optimiser.py`, the executor gives each edge its `draft_len`: `on_fleet_plan`).
A `plan` parameter fixes the plan instead (e.g. the one a testbed ran, so the simulator checks
that plan rather than one re-planned for other edge speeds).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from policies.baselines.fixed import Vanilla, VanillaParams
from policies.params import PolicyParams

EdgeIndex = Annotated[int, Field(ge=0, strict=True)]
DraftLen = Annotated[int, Field(ge=1, le=256, strict=True)]
Batch = Annotated[tuple[EdgeIndex, ...], Field(strict=False, min_length=1)]


class FixedPlan(PolicyParams):
    """A whole fleet plan: edge indices per cloud batch (in verification order) and each
    edge's draft length (edge e's at position e); every edge sits in exactly one batch."""

    batches: tuple[Batch, ...] = Field(
        strict=False, min_length=1, description="edge indices per batch, in order (TOML lists)"
    )
    lengths: tuple[DraftLen, ...] = Field(
        strict=False, min_length=1, description="draft tokens per NAV, one per edge"
    )

    @model_validator(mode="after")
    def _every_edge_seated_once(self) -> FixedPlan:
        """Each of the len(lengths) edges in exactly one batch, no other index."""
        seats = sorted(edge for batch in self.batches for edge in batch)
        if seats != list(range(len(self.lengths))):
            raise ValueError(
                f"batches must seat each edge 0..{len(self.lengths) - 1} (one per draft "
                f"length) exactly once; they seat {seats}"
            )
        return self

    def assignment(self) -> tuple[int, ...]:
        """The batch index of each edge."""
        batch_of = {edge: n for n, batch in enumerate(self.batches) for edge in batch}
        return tuple(batch_of[edge] for edge in range(len(self.lengths)))


class DipSDParams(VanillaParams):
    """DiP-SD's per-user draft length (overridden by the plan when the executor makes one)."""

    draft_len: int = Field(4, ge=1, le=256, description="draft tokens per NAV (set by the plan)")
    plan: FixedPlan | None = Field(None, description="a fixed fleet plan (default: optimised)")


class DipSD(Vanilla):
    """Vanilla stop-and-wait drafting with the plan's length; its batching lives in the cloud."""

    uses_fleet_plan = True

    def on_fleet_plan(self, draft_len: int) -> None:
        """The plan's draft length for this edge replaces the configured one."""
        self.params = self.params.model_copy(update={"draft_len": draft_len})

    def given_fleet_plan(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The `plan` parameter's batch index and draft length per edge (None: none given)."""
        plan: FixedPlan | None = self.params.plan  # type: ignore[attr-defined]
        return None if plan is None else (plan.assignment(), plan.lengths)
