"""The cloud's batching rule, one for the simulator's cloud and the testbed's server.

When the cloud is free it asks `BatchRule.take(queue, now_s)` which waiting jobs form the next
batch: the jobs at the head of the queue, in arrival order, up to `max_batch`, stopping at the
first job that cannot be batched (a prefill, served alone). A job whose key (its session) is
already in the batch is skipped and waits for a later batch (a session's verifications run in
order). If the batch is not full and no unbatchable job waits behind it, the cloud waits
until the oldest waiting job has waited `window_s` (or more jobs arrive: it asks again).
With `max_batch` 1 the queue is served first come, first served.

Pure: no clock, no sleep. The simulator (simulator/cloud.py) asks at SimPy times; the server
(realrun/cloud/batching.py) asks at its monotonic clock's times. The defaults are the
scenario's `[cloud]` defaults and the server's (one place).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_BATCH = 1
"""Jobs verified together when a scenario or server says nothing (1: first come, first served)."""
DEFAULT_BATCH_WINDOW_S = 0.0
"""How long the oldest waiting job waits for others when nothing is said (0: no wait)."""


class Waiting(Protocol):
    """A job in the cloud's queue, as the rule sees it."""

    @property
    def arrived_s(self) -> float:
        """When it joined the queue."""
        ...

    @property
    def batchable(self) -> bool:
        """Verified in one forward pass with other batchable jobs (a NAV, a decoding step)."""
        ...


@dataclass(frozen=True, slots=True)
class BatchRule:
    """Which waiting jobs form the next batch, and when (see the module docstring)."""

    max_batch: int = DEFAULT_MAX_BATCH
    window_s: float = DEFAULT_BATCH_WINDOW_S

    def __post_init__(self) -> None:
        if self.max_batch < 1 or not 0 <= self.window_s < math.inf:
            raise ValueError("max_batch must be >= 1 and window_s finite and >= 0")

    def take(
        self,
        queue: Sequence[Waiting],
        now_s: float,
        key: Callable[[Waiting], Hashable] | None = None,
    ) -> list[int] | float:
        """The indices (into `queue`, oldest first) of the batch to start at `now_s`, or the
        time to ask again (a window still open; inf for an empty queue). `key(job)`: jobs of
        one key never share a batch (None: every job its own key)."""
        if not queue:
            return math.inf
        head = queue[0]
        if self.max_batch == 1 or not head.batchable:
            return [0]
        batch: list[int] = []
        keys: set[Hashable] = set()
        blocked = False
        for index, job in enumerate(queue):
            if not job.batchable:
                blocked = True
                break
            if key is not None:
                k = key(job)
                if k in keys:
                    continue
                keys.add(k)
            batch.append(index)
            if len(batch) == self.max_batch:
                return batch
        deadline = head.arrived_s + self.window_s
        if not blocked and now_s < deadline:
            return deadline
        return batch

    def started(
        self, batch: Sequence[Waiting], key: Callable[[Waiting], Hashable] | None = None
    ) -> None:
        """The batch `take` returned has started: nothing to note (the rule keeps no state;
        a DiP-SD plan's turns do: policies/dipsd/turns.py)."""


__all__ = ["DEFAULT_BATCH_WINDOW_S", "DEFAULT_MAX_BATCH", "BatchRule", "Waiting"]
