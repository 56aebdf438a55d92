"""Which waiting NAVs form a DiP-SD plan's next batch: one rule for the simulator and the server.

A plan orders the fleet's edges into batches (`simulator/dipsd_plan.py`: `plan_batches`). The
cloud verifies them turn by turn: the current batch's still-active edges (an edge retires when
it has finished all its requests) start together once each of them has a NAV waiting; turns
whose edges have all retired are skipped. A waiting job outside the plan (a prefill: its key is
None) is served alone, before any batch. `take` only looks; `started` moves to the next turn
once the batch it returned starts (the server asks twice, before and after taking the model).

Pure: no clock, no sleep. The simulator's cloud (simulator/cloud.py) and the server's Batcher
(realrun/cloud/batching.py) both ask it, with the queue in arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any


class PlanTurns:
    """A plan's batches, its active edges and whose turn it is (see the module docstring)."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = tuple(tuple(batch) for batch in batches)
        edges = [edge for batch in self.batches for edge in batch]
        if not self.batches or not all(self.batches) or len(set(edges)) != len(edges):
            raise ValueError("a plan needs batches, none empty, each edge in one batch")
        self.edges = frozenset(edges)
        self.active = set(edges)
        self.turn = 0

    def retire(self, edge: int) -> None:
        """Edge `edge` has finished all its requests: batches stop waiting for it."""
        self.active.discard(edge)

    def members(self) -> tuple[int, tuple[int, ...]]:
        """(turn, its active edges): the first turn from the current one with any active."""
        for step in range(len(self.batches)):
            turn = (self.turn + step) % len(self.batches)
            members = tuple(edge for edge in self.batches[turn] if edge in self.active)
            if members:
                return turn, members
        return self.turn, ()

    def take(
        self,
        queue: Sequence[Any],
        now_s: float = 0.0,
        key: Callable[[Any], Hashable] | None = None,
    ) -> list[int] | float:
        """The indices (into `queue`, oldest first) of the batch to start now, or inf (wait
        for more arrivals). `key(job)`: the job's edge, None for a job outside the plan
        (default: the job's `edge` attribute). `now_s` is not used: a plan has no window."""
        edge_of = key if key is not None else (lambda job: job.edge)
        waiting: dict[Hashable, int] = {}
        for index, job in enumerate(queue):
            edge = edge_of(job)
            if edge is None:
                return [index]
            waiting.setdefault(edge, index)
        _, members = self.members()
        if not members or any(edge not in waiting for edge in members):
            return math.inf
        return [waiting[edge] for edge in members]

    def started(self, batch: Sequence[Any], key: Callable[[Any], Hashable] | None = None) -> None:
        """The batch `take` returned (its jobs) has started: the next turn is the following
        batch's (a job outside the plan changes no turn)."""
        edge_of = key if key is not None else (lambda job: job.edge)
        if any(edge_of(job) is None for job in batch):
            return
        turn, _ = self.members()
        self.turn = (turn + 1) % len(self.batches)


__all__ = ["PlanTurns"]
