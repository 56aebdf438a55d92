"""Batching of concurrent requests onto one worker, by the simulator's rule (policies/batching.py).

`Batcher.submit(key, item)` blocks its caller (a server thread) until its item was processed.
A caller that finds no batch running becomes the leader: it asks `BatchRule.take` which
waiting items form the next batch, at its monotonic clock's time: up to `max_batch` items with
distinct keys in arrival order (a second item of the same key waits for a later batch), once
the batch is full or the oldest waiting item has waited the window (0 = no wait); it waits
for that (woken by every new arrival to ask again), then for `lock` (the model's: other model
work such as a prefill goes first), asks again, runs `process(items)` once while holding
`lock`, and hands every caller its own result or exception. Then the next waiting caller, if
any, leads. With one client and no window, a request costs what it cost unbatched.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from policies.batching import BatchRule

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Ticket(Generic[Item, Result]):
    batchable: ClassVar[bool] = True
    key: Hashable
    item: Item
    arrived_s: float
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class Batcher(Generic[Item, Result]):
    """Runs `process` on batches of submitted items (see the module docstring).

    `process(items)` returns one Result or BaseException per item, in order; an exception it
    raises itself goes to every caller of the batch. `clock` gives the time in seconds the
    rule is asked at (monotonic).
    """

    def __init__(
        self,
        process: Callable[[list[Item]], list[Result | BaseException]],
        rule: BatchRule,
        lock: threading.Lock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.process = process
        self.rule = rule
        self.max_batch = rule.max_batch
        self.clock = clock
        self.lock = lock if lock is not None else threading.Lock()
        self.cond = threading.Condition()
        self.queue: list[_Ticket[Item, Result]] = []
        self.busy = False

    def submit(self, key: Hashable, item: Item) -> Result:
        """Process `item` in some batch; its result, or raise its exception."""
        with self.cond:
            ticket: _Ticket[Item, Result] = _Ticket(key, item, self.clock())
            self.queue.append(ticket)
            self.cond.notify_all()  # a leader waiting for its window asks the rule again
            while not ticket.done:
                if self.busy:
                    self.cond.wait()
                    continue
                self.busy = True
                self.cond.release()
                try:
                    self._lead()
                finally:
                    self.cond.acquire()
                    self.busy = False
                    self.cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Run one batch (called without the condition's lock, as the only leader)."""
        with self.cond:
            self._ready()
        with self.lock:
            with self.cond:  # more may have come meanwhile; a closed window stays closed
                batch = [self.queue[i] for i in self._ready()]
                self.queue = [t for t in self.queue if t not in batch]
            try:
                results = self.process([t.item for t in batch])
                if len(results) != len(batch):
                    raise RuntimeError("Batcher: process returned the wrong number of results")
            except BaseException as exc:  # every caller of the batch learns of it
                results = [exc] * len(batch)
        with self.cond:
            for ticket, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    ticket.error = result
                else:
                    ticket.result = result
                ticket.done = True

    def _ready(self) -> list[int]:
        """Wait (holding the condition) until the rule says start; the batch's indices."""
        while isinstance(wake_s := self.rule.take(self.queue, self.clock(), key=_key), float):
            self.cond.wait(timeout=None if wake_s == math.inf else max(0.0, wake_s - self.clock()))
        return wake_s


def _key(ticket: _Ticket) -> Hashable:  # type: ignore[type-arg]
    """A ticket's session: two of one session never share a batch."""
    return ticket.key


__all__ = ["Batcher"]
