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

With a DiP-SD plan's turns (policies/dipsd/turns.py) as the rule, the keys are the items'
edges: the plan's batches are verified in turn, each once all its active edges' items wait.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from policies.batching import BatchRule
from policies.dipsd.turns import PlanTurns

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
        rule: BatchRule | PlanTurns,
        lock: threading.Lock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.process = process
        self.rule = rule
        self.max_batch = rule.max_batch if isinstance(rule, BatchRule) else len(rule.edges)
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
        while True:
            with self.cond:
                self._ready()
            with self.lock:
                with self.cond:  # more may have come meanwhile; a closed window stays closed
                    picked = self.rule.take(self.queue, self.clock(), key=_key)
                    if isinstance(picked, float):
                        continue  # (a plan's turn moved on) wait again, without the model
                    batch = [self.queue[i] for i in picked]
                    self.queue = [t for t in self.queue if t not in batch]
                    self.rule.started(batch, key=_key)
                try:
                    results = self.process([t.item for t in batch])
                    if len(results) != len(batch):
                        raise RuntimeError("Batcher: process returned the wrong number of results")
                except BaseException as exc:  # every caller of the batch learns of it
                    results = [exc] * len(batch)
            break
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


@dataclass(frozen=True)
class PlanSeat:
    """A session's place in a DiP-SD plan (its `open` says it): the plan's batches of edge
    indices in verification order, the session's edge, and whether it is the edge's last
    request (its close retires the edge)."""

    batches: tuple[tuple[int, ...], ...]
    edge: int
    last: bool


class PlanBatching(Generic[Item, Result]):
    """The server's DiP-SD plan in progress: one Batcher over the plan's turns, and which open
    session is which edge. A plan starts with its first session and ends when all its edges
    have retired (their last session closed or expired); one plan at a time."""

    def __init__(
        self, process: Callable[[list[Item]], list[Result | BaseException]], lock: threading.Lock
    ) -> None:
        self.process = process
        self.lock = lock
        self.mutex = threading.Lock()
        self.batcher: Batcher[Item, Result] | None = None
        self.seats: dict[str, PlanSeat] = {}

    def join(self, sid: str, seat: PlanSeat) -> None:
        """Session `sid` takes `seat`; ValueError if another plan is in progress."""
        with self.mutex:
            if self.batcher is None:
                self.batcher = Batcher(self.process, PlanTurns(seat.batches), self.lock)
            turns = self.batcher.rule
            assert isinstance(turns, PlanTurns)
            if turns.batches != seat.batches:
                raise ValueError("another DiP-SD plan is in progress on this server")
            if seat.edge not in turns.active:
                raise ValueError(f"edge {seat.edge} of the plan has already retired")
            self.seats[sid] = seat

    def submit(self, sid: str, item: Item) -> Result | None:
        """Process `item` in its plan's turn (blocks), or None if `sid` has no seat."""
        with self.mutex:
            seat, batcher = self.seats.get(sid), self.batcher
        if seat is None or batcher is None:
            return None
        return batcher.submit(seat.edge, item)

    def leave(self, sid: str, retire: bool = False) -> None:
        """Session `sid` is closed (or expired: `retire`); its edge retires if it was the
        edge's last session (or `retire`), and the plan ends when no edge is left."""
        with self.mutex:
            seat, batcher = self.seats.pop(sid, None), self.batcher
            if seat is None or batcher is None or not (seat.last or retire):
                return
            turns = batcher.rule
            assert isinstance(turns, PlanTurns)
            with batcher.cond:  # a leader waiting for this edge asks the turns again
                turns.retire(seat.edge)
                batcher.cond.notify_all()
            if not turns.active:
                self.batcher = None


MAX_PLAN_EDGES = 256
"""Most edges in one DiP-SD plan an `open` may carry."""


def parse_plan(obj: dict[str, Any]) -> PlanSeat | None:
    """The optional DiP-SD plan seat of an `open` request (None: no plan); ValueError (one
    line, the server's 422) if malformed."""
    value = obj.get("plan")
    if value is None:
        return None
    shape = "'plan' must be a map {'batches': [[int, ...], ...], 'edge': int, 'last': bool}"
    if not isinstance(value, dict) or set(value) != {"batches", "edge", "last"}:
        raise ValueError(shape)
    batches, edge, last = value["batches"], value["edge"], value["last"]
    if (
        not isinstance(batches, list)
        or not all(isinstance(b, list) and b and all(_is_int(e) for e in b) for b in batches)
        or not isinstance(last, bool)
        or not _is_int(edge)
    ):
        raise ValueError(shape)
    edges = [e for b in batches for e in b]
    if not edges or len(edges) > MAX_PLAN_EDGES or len(set(edges)) != len(edges):
        raise ValueError(f"'plan.batches' must hold 1..{MAX_PLAN_EDGES} distinct edges")
    if edge not in edges:
        raise ValueError("'plan.edge' must be one of the plan's edges")
    return PlanSeat(tuple(tuple(b) for b in batches), edge, last)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["Batcher", "PlanBatching", "PlanSeat", "parse_plan"]
