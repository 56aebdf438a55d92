"""In-order delivery per session, and speculative uploads that follow a pending verification.

Why: an edge that uploads drafts while its verification is still in flight (PipeSD's proactive
upload, overlapped with the NAV as in the simulator) sends two requests at once, on two HTTP
connections. The server must apply them in the order the edge sent them, and must drop an
upload that was drafted on a guess the verification turned out to refute.

- `Sequencer`: requests carrying a `seq` number are admitted one at a time per session, in
  the order 0, 1, 2, ... (whatever connection they came by); a request waits for its turn
  (a verify ahead of it finishes first) and is refused with 409 after `timeout_s`, at once
  if its number was used or lies more than `window` ahead, and with 404 if the session is
  unknown. A refused request still uses its number (the next one can go).
- `follow_up`: which tokens of a *conditional* upload (one tagged `after` = k, drafted while
  the session's k-th verify was pending) the server keeps. This is the rule the edge applies
  to its own copy (realrun/edge/executor.py), so both sides agree on what the server holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from realrun.protocol import ProtocolError


class Sequencer:
    """Admits each session's numbered requests in order (see the module docstring)."""

    def __init__(self, timeout_s: float = 30.0, window: int = 64) -> None:
        self.timeout_s = timeout_s
        self.window = window
        self.cond = threading.Condition()
        self.next: dict[str, int] = {}

    def begin(self, sid: str) -> None:
        """A new session: its first numbered request is 0."""
        with self.cond:
            self.next[sid] = 0

    def forget(self, sid: str) -> None:
        """Drop a closed session (its waiting requests then get 404)."""
        with self.cond:
            self.next.pop(sid, None)
            self.cond.notify_all()

    @contextmanager
    def turn(self, sid: str, seq: int | None) -> Iterator[float]:
        """Hold session `sid`'s turn `seq` (None: unordered, no wait); yields the seconds
        waited. The turn passes on when the block ends, whether it raised or not."""
        if seq is None:
            yield 0.0
            return
        start = time.perf_counter()
        deadline = start + self.timeout_s
        with self.cond:
            while True:
                expected = self.next.get(sid)
                if expected is None:
                    raise ProtocolError(404, "unknown session")
                if seq < expected:
                    raise ProtocolError(409, f"'seq' {seq} was already used (next is {expected})")
                if seq == expected:
                    break
                if seq > expected + self.window:
                    raise ProtocolError(
                        409, f"'seq' {seq} is more than {self.window} ahead of {expected}"
                    )
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise ProtocolError(
                        409, f"'seq' {seq} never got its turn (still waiting for {expected})"
                    )
                self.cond.wait(left)
        try:
            yield time.perf_counter() - start
        finally:
            with self.cond:
                if sid in self.next:
                    self.next[sid] = seq + 1
                self.cond.notify_all()


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
