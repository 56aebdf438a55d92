"""In-order delivery per session, and speculative uploads that follow a pending verification.

Why: an edge that uploads drafts while its verification is still in flight (PipeSD's proactive
upload, overlapped with the NAV as in the simulator) sends two requests at once, on two HTTP
connections. The server must apply them in the order the edge sent them, and must drop an
upload that was drafted on a guess the verification turned out to refute.

- `Sequencer`: requests carrying a `seq` number are admitted one at a time per session, in
  the order 0, 1, 2, ... (whatever connection they came by); a request waits for its turn
  (a verify ahead of it finishes first), parked in the event loop without a worker thread,
  and is refused with 409 after `timeout_s`, at once if its number was used or lies more than
  `window` ahead, with 429 if `max_parked` requests of its session already wait, and with
  404 if the session is unknown. A request that got its turn uses its number even if it then
  fails (the next one can go). Unnumbered requests take no number but wait while another
  request of their session holds its turn, so a session's requests reach the model (and hold
  a worker thread) one at a time.
- `follow_up`: which tokens of a *conditional* upload (one tagged `after` = k, drafted while
  the session's k-th verify was pending) the server keeps. This is the rule the edge applies
  to its own copy (realrun/edge/executor.py), so both sides agree on what the server holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from realrun.protocol import ProtocolError


class Sequencer:
    """Admits each session's numbered requests in order (see the module docstring).

    Asynchronous: a request waiting for its turn is a coroutine parked on a future in the
    server's event loop (no worker thread), at most `max_parked` per session at once (429
    past it). Call it from the event loop only.
    """

    def __init__(self, timeout_s: float = 30.0, window: int = 64, max_parked: int = 8) -> None:
        self.timeout_s = timeout_s
        self.window = window
        self.max_parked = max_parked
        self.next: dict[str, int] = {}
        self.active: set[str] = set()
        """Sessions with a request in its turn now (one at a time per session)."""
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}

    def begin(self, sid: str) -> None:
        """A new session: its first numbered request is 0."""
        self.next[sid] = 0

    def forget(self, sid: str) -> None:
        """Drop a closed session (its waiting requests then get 404)."""
        self.next.pop(sid, None)
        self._wake(sid)

    def parked(self, sid: str) -> int:
        """Requests of `sid` waiting for their turn now."""
        return len(self.waiters.get(sid, ()))

    def _wake(self, sid: str) -> None:
        for future in self.waiters.get(sid, ()):
            if not future.done():
                future.set_result(None)

    def _check(self, sid: str, seq: int | None) -> bool:
        """Whether it is `seq`'s turn (None: whether the session is free); raise if it never
        will be (404, 409)."""
        expected = self.next.get(sid)
        if expected is None:
            raise ProtocolError(404, "unknown session")
        if seq is None:
            return sid not in self.active
        if seq < expected:
            raise ProtocolError(409, f"'seq' {seq} was already used (next is {expected})")
        if seq > expected + self.window:
            raise ProtocolError(409, f"'seq' {seq} is more than {self.window} ahead of {expected}")
        return seq == expected and sid not in self.active

    async def _park(self, sid: str, left_s: float) -> None:
        """Wait (at most `left_s`) until the session's turn moves on."""
        waiting = self.waiters.setdefault(sid, [])
        if len(waiting) >= self.max_parked:
            raise ProtocolError(
                429, f"{len(waiting)} requests of this session already wait for their turn"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        try:
            await asyncio.wait([future], timeout=left_s)
        finally:
            waiting.remove(future)
            if not waiting:
                self.waiters.pop(sid, None)

    @asynccontextmanager
    async def turn(self, sid: str, seq: int | None) -> AsyncIterator[float]:
        """Hold session `sid`'s turn `seq` (None: unordered, only waits while another request
        of the session holds its turn); yields the seconds waited. The turn passes on when
        the block ends, whether it raised or not."""
        start = time.perf_counter()
        deadline = start + self.timeout_s
        while not self._check(sid, seq):
            left = deadline - time.perf_counter()
            if left <= 0:
                expected = self.next.get(sid)
                raise ProtocolError(
                    409, f"'seq' {seq} never got its turn (still waiting for {expected})"
                )
            await self._park(sid, left)
        self.active.add(sid)
        try:
            yield time.perf_counter() - start
        finally:
            self.active.discard(sid)
            if sid in self.next and seq is not None:
                self.next[sid] = seq + 1
            self._wake(sid)


@dataclass
class Chain:
    """What a session's conditional uploads depend on: its verifies so far."""

    verifies: int = 0
    whole: bool = False
    """Whether the latest verify accepted every token it verified."""
    stale: int = 0
    """A verify count whose follow-up uploads were found stale (0: none)."""

    def verified(self, accepted: int, n: int) -> None:
        self.verifies += 1
        self.whole = accepted == n


def follow_up(
    chain: Chain,
    after: int,
    at: int,
    tokens: Sequence[int],
    held: Sequence[int],
    first_held: int,
    matches_pending: Callable[[int, int], bool],
) -> tuple[int, int] | None:
    """The part of a conditional upload the server appends: (skip, keep) = drop the first
    `skip` tokens (positions the server already holds with the same token), append the next
    `keep` (all the rest); None if the upload is stale (then nothing is appended).

    `after`: the verify count the upload was drafted behind; `at`: output position of
    tokens[0]; `held`: the tokens the server holds at output positions `first_held`, ... (the
    pending token first, then those uploaded since the last verify): the upload must continue
    them. `matches_pending(position, token)`: whether the edge's guess at the pending token's
    position counts as that token (greedy: equal ids; synthetic: the position's verdict).
    Stale = the verify was not wholly accepted, or a held position holds another token; a
    later upload behind the same verify is then stale too. ProtocolError(422) if `after` is
    not the session's latest verify or the upload leaves a gap.
    """
    if after != chain.verifies:
        raise ProtocolError(
            422, f"'after' is {after} but the session has had {chain.verifies} verifies"
        )
    if chain.stale == after or not chain.whole:
        chain.stale = after
        return None
    end = first_held + len(held)
    if at > end:
        raise ProtocolError(422, f"upload at position {at} leaves a gap (next is {end})")
    if at < first_held:
        raise ProtocolError(422, f"upload at position {at} is before the pending token")
    skip = min(len(tokens), end - at)
    for i in range(skip):
        position = at + i
        ours = held[position - first_held]
        same = matches_pending(position, tokens[i]) if position == first_held else ours == tokens[i]
        if not same:
            chain.stale = after
            return None
    return skip, len(tokens) - skip


__all__ = ["Chain", "Sequencer", "follow_up"]
