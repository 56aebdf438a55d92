"""The server's book of open sessions: who opened each, when it was last used, what is in flight.

Why: sessions hold model state (KV slots, a resident cache), so a client that opens sessions
and walks away must not keep them: a session no request has touched for `idle_timeout_s` is
*expired* (the server drops it from its target; later requests get 404), and each client may
hold at most `max_per_client` sessions of the `max_sessions` in all. A session with a request
in flight (`busy`) never expires under it. Thread-safe (one lock); the server calls `reserve`
and `use`/`release` around every request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from realrun.cloud.ordering import Chain
from realrun.protocol import ProtocolError


@dataclass
class Entry:
    """One open session's server-side state (the target holds its tokens)."""

    client: str
    last_used_s: float
    busy: int = 0
    chain: Chain = field(default_factory=Chain)
    """Its verifies so far, for conditional uploads (realrun.cloud.ordering.follow_up)."""


class SessionTable:
    """Open sessions by id, with the limits and the idle expiry of the module docstring."""

    def __init__(self, max_sessions: int, max_per_client: int, idle_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.max_per_client = min(max_per_client, max_sessions)
        self.idle_timeout_s = idle_timeout_s
        self.entries: dict[str, Entry] = {}
        self.opening: dict[str, int] = {}
        """Opens in progress per client."""
        self.lock = threading.Lock()
        self.expired_total = 0

    def __len__(self) -> int:
        return len(self.entries)

    @contextmanager
    def reserve(self, client: str) -> Iterator[None]:
        """Hold a place for a new session of `client` while the block opens it (429 past the
        global or the client's limit; opens in progress count)."""
        with self.lock:
            if len(self.entries) + sum(self.opening.values()) >= self.max_sessions:
                raise ProtocolError(429, f"session limit ({self.max_sessions}) reached")
            held = sum(1 for e in self.entries.values() if e.client == client)
            held += self.opening.get(client, 0)
            if held >= self.max_per_client:
                raise ProtocolError(
                    429, f"this client holds {held} sessions (limit {self.max_per_client})"
                )
            self.opening[client] = self.opening.get(client, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.opening[client] -= 1
                if not self.opening[client]:
                    del self.opening[client]

    def add(self, sid: str, client: str) -> None:
        """Record a session the target just opened."""
        with self.lock:
            self.entries[sid] = Entry(client, time.monotonic())

    def use(self, sid: str) -> Entry:
        """Mark a request on `sid` in flight (it cannot expire meanwhile); 404 if unknown."""
        with self.lock:
            entry = self.entries.get(sid)
            if entry is None:
                raise ProtocolError(404, "unknown session (closed, expired or never opened)")
            entry.busy += 1
            return entry

    def release(self, sid: str) -> None:
        """A request on `sid` is done: its idle time starts now."""
        with self.lock:
            entry = self.entries.get(sid)
            if entry is not None:
                entry.busy -= 1
                entry.last_used_s = time.monotonic()

    def chain(self, sid: str) -> Chain:
        """The session's verify chain; 404 if the session is gone."""
        with self.lock:
            entry = self.entries.get(sid)
            if entry is None:
                raise ProtocolError(404, "unknown session (closed, expired or never opened)")
            return entry.chain

    def remove(self, sid: str) -> None:
        """Forget a closed session."""
        with self.lock:
            self.entries.pop(sid, None)

    def take_expired(self, now_s: float | None = None) -> list[str]:
        """Remove and return the sessions idle (nothing in flight) for over the timeout."""
        now_s = time.monotonic() if now_s is None else now_s
        with self.lock:
            idle = [
                sid
                for sid, e in self.entries.items()
                if e.busy == 0 and now_s - e.last_used_s > self.idle_timeout_s
            ]
            for sid in idle:
                del self.entries[sid]
            self.expired_total += len(idle)
            return idle


__all__ = ["Entry", "SessionTable"]
