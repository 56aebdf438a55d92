"""Links: bandwidth as a function of time (constant or a `t_s, mbps` trace) and serialised
one-way channels. A message of B bytes sent at t occupies the channel from max(t, free) for
overhead + B / bandwidth(t) (the bandwidth read from the trace as time passes), then arrives
one-way latency later.

A channel may have a token bucket of `burst_bytes` (as Linux's tbf shaper and most real access
links do): credit accrues at the bandwidth while the channel is idle, up to the burst, and that
many bytes of a message pass at once; the rest goes at the bandwidth. Burst 0 is a pure rate.
"""

from __future__ import annotations

import bisect
import heapq
import math
from pathlib import Path
from typing import NamedTuple

from simulator.inputs import read_step_trace
from simulator.profile import MAX_MBPS, MIN_MBPS

"""Latest step time accepted in a bandwidth trace (about 30 years)."""
BITS_PER_MEGABIT = 1e6


class ConstantBandwidth:
    """A fixed bandwidth."""

    def __init__(self, mbps: float) -> None:
        self.mbps = mbps
        self._bytes_per_s = mbps * BITS_PER_MEGABIT / 8.0

    def finish_time(self, start_s: float, n_bytes: float) -> float:
        """When `n_bytes` that start transmitting at `start_s` have all been sent."""
        return start_s + n_bytes / self._bytes_per_s

    def bytes_between(self, t0_s: float, t1_s: float) -> float:
        """Bytes the link can carry from t0 to t1."""
        return (t1_s - t0_s) * self._bytes_per_s

    def at(self, t_s: float) -> float:
        """Bandwidth in Mbit/s at time t."""
        return self.mbps


class TraceBandwidth:
    """A piecewise-constant bandwidth from a trace; loops (or holds its last value) past the end.

    The trace's last row starts the final step; with `repeat` the trace period is the last
    time stamp plus the mean step length, so the final value lasts as long as a typical step.
    """

    def __init__(self, times_s: list[float], mbps: list[float], repeat: bool, source: str) -> None:
        self.source = source
        self.times = times_s
        self.rates = [m * BITS_PER_MEGABIT / 8.0 for m in mbps]
        self.mbps = mbps
        self.repeat = repeat
        steps = len(times_s)
        self.period = (
            times_s[-1] + (times_s[-1] - times_s[0]) / (steps - 1) if steps > 1 else math.inf
        )
        if steps == 1:
            self.repeat = False
        # cumulative bytes at each step start within one period
        self.cumulative = [0.0]
        for i in range(1, steps):
            self.cumulative.append(
                self.cumulative[-1] + self.rates[i - 1] * (times_s[i] - times_s[i - 1])
            )
        self.period_bytes = (
            self.cumulative[-1] + self.rates[-1] * (self.period - times_s[-1])
            if self.repeat
            else math.inf
        )

    @classmethod
    def from_csv(cls, path: Path, repeat: bool) -> TraceBandwidth:
        """Read a trace CSV with columns t_s, mbps (a header row is required); times finite
        and increasing from 0, rates in (0, MAX_MBPS]."""
        times, values = read_step_trace(path, "trace", "mbps", MIN_MBPS, MAX_MBPS)
        return cls(times, values, repeat, str(path))

    def _locate(self, t_s: float) -> tuple[int, float, int]:
        """(step index, time offset into the period, number of whole periods) for time t."""
        cycles = 0
        if self.repeat and t_s >= self.period:
            cycles = int(t_s // self.period)
            t_s -= cycles * self.period
        return bisect.bisect_right(self.times, t_s) - 1, t_s, cycles

    def at(self, t_s: float) -> float:
        """Bandwidth in Mbit/s at time t."""
        index, _, _ = self._locate(t_s)
        return self.mbps[index]

    def _bytes_until(self, t_s: float) -> float:
        index, offset, cycles = self._locate(t_s)
        within = self.cumulative[index] + self.rates[index] * (offset - self.times[index])
        return cycles * self.period_bytes + within if cycles else within

    def bytes_between(self, t0_s: float, t1_s: float) -> float:
        """Bytes the link can carry from t0 to t1."""
        return self._bytes_until(t1_s) - self._bytes_until(t0_s)

    def finish_time(self, start_s: float, n_bytes: float) -> float:
        """Invert cumulative bytes: when `n_bytes` starting at `start_s` are through."""
        target = self._bytes_until(start_s) + n_bytes
        cycles = 0
        if self.repeat and target >= self.period_bytes:
            cycles = int(target // self.period_bytes)
            target -= cycles * self.period_bytes
        index = bisect.bisect_right(self.cumulative, target) - 1
        index = min(index, len(self.times) - 1)
        t = self.times[index] + (target - self.cumulative[index]) / self.rates[index]
        return t + cycles * self.period if cycles else t


Bandwidth = ConstantBandwidth | TraceBandwidth


class Transmission(NamedTuple):
    """When a message started occupying the channel, finished sending, and arrived."""

    start_s: float
    finish_s: float
    arrive_s: float


_new_tuple = tuple.__new__
"""Builds a Transmission without its Python-level `__new__` (once per message)."""


class Channel:
    """A serialised one-way channel: messages queue behind each other in send order.

    With `burst_bytes` > 0 a token bucket (full at t = 0) lets up to that many bytes of a
    message pass at once after an idle spell; the bucket refills at the bandwidth.
    """

    __slots__ = (
        "_bytes_per_s",
        "bandwidth",
        "burst_bytes",
        "bytes_sent",
        "credit",
        "deferred",
        "free_at",
        "latency_s",
        "messages",
        "overhead_s",
    )

    def __init__(
        self, bandwidth: Bandwidth, overhead_s: float, latency_s: float, burst_bytes: float = 0.0
    ) -> None:
        self.bandwidth = bandwidth
        self._bytes_per_s = (
            bandwidth._bytes_per_s if isinstance(bandwidth, ConstantBandwidth) else None
        )
        """A constant bandwidth's rate: `transmit` computes its finish time itself."""
        self.overhead_s = overhead_s
        self.latency_s = latency_s
        self.burst_bytes = float(burst_bytes)
        self.credit = self.burst_bytes
        self.free_at = 0.0
        self.bytes_sent = 0
        self.messages = 0
        self.deferred: list[tuple[float, int]] = []
        """Bytes to send at a later time without a message of their own (heap by time)."""

    def defer(self, at_s: float, n_bytes: int) -> None:
        """Bytes that will occupy the channel from `at_s` on (TCP ACKs of an answer): no
        per-message overhead, nobody waits for them, but later messages queue behind them
        (and they use the bucket). Sent when the channel is next used at or after `at_s`."""
        if n_bytes > 0:
            heapq.heappush(self.deferred, (at_s, n_bytes))

    def transmit(self, send_s: float, n_bytes: int) -> Transmission:
        """Send a message at `send_s` (callers send in non-decreasing time order), after any
        deferred bytes due by then."""
        while self.deferred and self.deferred[0][0] <= send_s:
            at_s, deferred_bytes = heapq.heappop(self.deferred)
            self._occupy(at_s if at_s > self.free_at else self.free_at, deferred_bytes)
            self.bytes_sent += deferred_bytes
        free_at = self.free_at
        start = send_s if send_s > free_at else free_at
        if self.burst_bytes > 0.0:
            finish = self._occupy(start + self.overhead_s, n_bytes)
        elif (rate := self._bytes_per_s) is not None:  # ConstantBandwidth.finish_time, inlined
            finish = self.free_at = start + self.overhead_s + n_bytes / rate
        else:  # _occupy without a bucket, inlined (once per message)
            finish = self.free_at = self.bandwidth.finish_time(start + self.overhead_s, n_bytes)
        self.bytes_sent += n_bytes
        self.messages += 1
        return _new_tuple(Transmission, (start, finish, finish + self.latency_s))

    def _occupy(self, begin: float, n_bytes: float) -> float:
        """Put `n_bytes` on the channel from `begin` (token bucket first): when they are out."""
        if self.burst_bytes > 0.0:
            refill = self.bandwidth.bytes_between(self.free_at, begin)
            credit = min(self.burst_bytes, self.credit + refill)
            paid = min(credit, float(n_bytes))
            self.credit = credit - paid
            finish = self.bandwidth.finish_time(begin, n_bytes - paid) if n_bytes > paid else begin
        else:
            finish = self.bandwidth.finish_time(begin, n_bytes)
        self.free_at = finish
        return finish

    def min_delivery_s(self) -> float:
        """A lower bound on any message's time from send to arrival (no queueing, no bytes)."""
        return self.overhead_s + self.latency_s
