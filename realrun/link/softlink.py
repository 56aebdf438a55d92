"""Software link shaping: an httpx transport that delays requests as the simulator's link would.

For machines without root or `ip`/`tc`. Per request: the body's bytes are serialised on the
uplink channel (simulator.link.Channel: queued behind earlier messages, B / bandwidth(t) read
from the trace), then the one-way latency passes, then the real request runs; the response
body is serialised on the downlink channel from the moment its headers came (so reading it over
loopback overlaps its serialisation) and the one-way latency passes again. Headers and the real
stack's own costs are not shaped: they stand in for the per-message overheads.
"""

from __future__ import annotations

import threading
import time

import httpx

from simulator.link import Bandwidth, Channel


class LinkClock:
    """The two serialised channels of one link and its t = 0, shared by every transport."""

    def __init__(
        self, uplink: Bandwidth, downlink: Bandwidth, latency_s: float, burst_bytes: float = 0.0
    ) -> None:
        self.uplink, self.downlink, self.latency_s = uplink, downlink, latency_s
        self.burst_bytes = burst_bytes
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """t = 0 of the traces is now; both channels are idle."""
        with self._lock:
            self._t0 = time.monotonic()
            self._channels = {
                "uplink": Channel(self.uplink, 0.0, self.latency_s, self.burst_bytes),
                "downlink": Channel(self.downlink, 0.0, self.latency_s, self.burst_bytes),
            }

    def arrival(self, direction: str, n_bytes: int, sent: float) -> float:
        """Reserve the channel for a message sent at monotonic time `sent`; when it arrives."""
        with self._lock:
            send_s = max(0.0, sent - self._t0)
            return self._t0 + self._channels[direction].transmit(send_s, n_bytes).arrive_s

    def deliver(self, direction: str, n_bytes: int, sent: float | None = None) -> None:
        """Block until a message of `n_bytes` sent at `sent` (default: now) has arrived."""
        sent = time.monotonic() if sent is None else sent
        wait = self.arrival(direction, n_bytes, sent) - time.monotonic()
        if wait > 0:
            time.sleep(wait)


class ShapedTransport(httpx.BaseTransport):
    """Wraps `httpx.HTTPTransport`, holding each body back as the link would (thread-safe)."""

    def __init__(self, clock: LinkClock, inner: httpx.BaseTransport | None = None) -> None:
        self.clock = clock
        self.inner = inner if inner is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.clock.deliver("uplink", len(request.read()))
        response = self.inner.handle_request(request)
        answered = time.monotonic()  # the server has started its answer
        try:
            raw = b"".join(response.iter_raw())
        finally:
            response.close()
        self.clock.deliver("downlink", len(raw), sent=answered)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


__all__ = ["LinkClock", "ShapedTransport"]
