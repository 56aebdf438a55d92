"""Batching of concurrent requests onto one worker: whoever finds the model free leads a batch.

`Batcher.submit(key, item)` blocks its caller (a server thread) until its item was processed.
A caller that finds no batch running becomes the leader: it waits `window_s` (so requests
arriving meanwhile join; 0 = no wait), then for `lock` (the model's: other model work such as
a prefill goes first), takes up to `max_batch` waiting items with distinct keys in arrival
order (a second item of the same key waits for a later batch), runs `process(items)` once
while holding `lock`, and hands every caller its own result or exception. Then the next
waiting caller, if any, leads. With one client and no window, a request costs what it cost
unbatched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Ticket(Generic[Item, Result]):
    key: Hashable
    item: Item
    done: bool = False
    result: Result | None = None
    error: BaseException | None = None


class Batcher(Generic[Item, Result]):
    """Runs `process` on batches of submitted items (see the module docstring).

    `process(items)` returns one Result or BaseException per item, in order; an exception it
    raises itself goes to every caller of the batch.
    """

    def __init__(
        self,
        process: Callable[[list[Item]], list[Result | BaseException]],
        window_s: float = 0.0,
        max_batch: int = 8,
        lock: threading.Lock | None = None,
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.process = process
        self.window_s = window_s
        self.max_batch = max_batch
        self.lock = lock if lock is not None else threading.Lock()
        self.cond = threading.Condition()
        self.queue: list[_Ticket[Item, Result]] = []
        self.busy = False

    def submit(self, key: Hashable, item: Item) -> Result:
        """Process `item` in some batch; its result, or raise its exception."""
        ticket: _Ticket[Item, Result] = _Ticket(key, item)
        with self.cond:
            self.queue.append(ticket)
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
        if self.window_s > 0:
            time.sleep(self.window_s)
        with self.lock:
            with self.cond:
                batch, keys = [], set()
                for ticket in self.queue:
                    if ticket.key not in keys and len(batch) < self.max_batch:
                        batch.append(ticket)
                        keys.add(ticket.key)
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


__all__ = ["Batcher"]
