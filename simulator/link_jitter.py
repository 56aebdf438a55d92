"""Uplink delay spread: each message's extra delay drawn from measured samples.

A real link and the stacks at its ends do not deliver every message after the same time: the
testbed's upload durations spread by several milliseconds around their median (threads,
event loops, the delay relay). A `Channel` is deterministic. `JitteredChannel` adds to each
message's arrival one sample drawn at random (the edge's seeded stream) from a scenario's
`[link] uplink_jitter` file: samples in seconds, centred where the profile's overhead is (a
median), so negative ones arrive early, by at most that overhead (a message never outruns the
link's latency and bytes). Messages still arrive in send order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from simulator.inputs import read_samples
from simulator.link import Bandwidth, Channel, Transmission

MAX_JITTER_S = 60.0
"""Largest |sample| accepted (seconds)."""
SAMPLE_COLUMN = "jitter_s"


class UplinkJitter:
    """Samples of a message's extra one-way delay (seconds), drawn uniformly at random."""

    __slots__ = ("samples", "source")

    def __init__(self, samples: Sequence[float], source: str = "") -> None:
        if not samples:
            raise ValueError("UplinkJitter needs at least one sample")
        self.samples = tuple(float(s) for s in samples)
        self.source = source

    @classmethod
    def from_csv(cls, path: Path) -> UplinkJitter:
        """Read a CSV with a `jitter_s` column (one-line ConfigError naming the file and the
        line for a bad one)."""
        samples = read_samples(path, "uplink jitter", SAMPLE_COLUMN, -MAX_JITTER_S, MAX_JITTER_S)
        return cls(samples, str(path))

    @property
    def least_s(self) -> float:
        """The smallest sample (bounds how early a message can arrive)."""
        return min(self.samples)


class JitteredChannel(Channel):
    """A `Channel` whose messages each arrive a drawn sample later (or earlier): never earlier
    than without the per-message overhead, never before the previous message arrived."""

    __slots__ = ("_last_arrive_s", "_random", "_samples", "jitter")

    def __init__(
        self,
        bandwidth: Bandwidth,
        overhead_s: float,
        latency_s: float,
        burst_bytes: float,
        jitter: UplinkJitter,
        seed: int,
    ) -> None:
        super().__init__(bandwidth, overhead_s, latency_s, burst_bytes)
        self.jitter = jitter
        self._samples = jitter.samples
        self._random = random.Random(seed).random
        self._last_arrive_s = 0.0

    def transmit(self, send_s: float, n_bytes: int) -> Transmission:
        """Send as `Channel.transmit`, then move the arrival by a drawn sample."""
        tx = Channel.transmit(self, send_s, n_bytes)
        samples = self._samples
        arrive = tx.arrive_s + samples[int(self._random() * len(samples))]
        earliest = tx.arrive_s - self.overhead_s  # a sample cancels at most the overhead
        if arrive < earliest:
            arrive = earliest
        if arrive < self._last_arrive_s:
            arrive = self._last_arrive_s
        self._last_arrive_s = arrive
        return Transmission(tx.start_s, tx.finish_s, arrive)

    def min_delivery_s(self) -> float:
        """A lower bound on any message's time from send to arrival: the latency, and the
        overhead less the smallest sample's shortfall."""
        return self.latency_s + max(self.overhead_s + self.jitter.least_s, 0.0)


__all__ = ["MAX_JITTER_S", "SAMPLE_COLUMN", "JitteredChannel", "UplinkJitter"]
