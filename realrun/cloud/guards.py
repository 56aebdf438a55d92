"""Per-client and global admission bounds of the cloud server (all O(1), refusing at once).

- `RateLimiter`: requests per second per client address (token bucket; 429).
- `ClientCounter`: things a client holds at once (requests in flight, connections), bounded.
- `ByteBudget`: request body bytes buffered at once, all clients together (a semaphore on
  bytes; the server answers 503 with Retry-After when it is spent). Large bodies (link probes)
  may take only part of it, so the protocol's small requests always find room.
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """Token bucket per client: `rate` requests per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float | None = None, max_clients: int = 10_000):
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Whether `client` may make a request now (it costs one token if so)."""
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) >= self.max_clients and client not in self.buckets:
                self.buckets.clear()
            tokens, last = self.buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self.buckets[client] = (tokens - 1.0 if ok else tokens, now)
            return ok


class ClientCounter:
    """How many of something each client holds; `take` refuses past `limit` per client."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}
        self.lock = threading.Lock()

    def take(self, client: str) -> bool:
        """Count one more for `client`; False (nothing counted) if it holds `limit` already."""
        with self.lock:
            count = self.held.get(client, 0)
            if count >= self.limit:
                return False
            self.held[client] = count + 1
            return True

    def give(self, client: str) -> None:
        """Count one fewer for `client`."""
        with self.lock:
            count = self.held.get(client, 0) - 1
            if count > 0:
                self.held[client] = count
            else:
                self.held.pop(client, None)

    def count(self, client: str) -> int:
        with self.lock:
            return self.held.get(client, 0)


class ByteBudget:
    """A semaphore on bytes: `take(n)` reserves n of `total` or refuses at once.

    `large=True` (a body over the protocol's usual bound) may only use `total - reserve`.
    """

    def __init__(self, total: int, reserve: int) -> None:
        self.total = total
        self.reserve = reserve
        self.used = 0
        self.peak = 0
        self.lock = threading.Lock()

    def take(self, n: int, large: bool = False) -> bool:
        """Reserve `n` bytes; False (nothing reserved) if that would exceed the bound."""
        bound = self.total - self.reserve if large else self.total
        with self.lock:
            if self.used + n > bound:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        """Release `n` reserved bytes."""
        with self.lock:
            self.used -= n


__all__ = ["ByteBudget", "ClientCounter", "RateLimiter"]
