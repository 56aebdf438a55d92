"""Link calibration against the kit's cloud server: per-message overhead, bandwidth, latency.

PipeSD probes the link at start-up with token batches of 1..8 tokens; here the same idea with
padded `/v1/probe` messages of chosen sizes (the server reads and counts the bytes, nothing
more), timed end to end on the client. The round trip of an empty `/v1/health` request gives
the latency: one-way latency = half the fastest health round trip. A probe of B bytes then
takes overhead + B / bandwidth + 2 x one-way latency; the fit (`calibrate.fit.fit_link`) gives
overhead + 2 x latency as its intercept and the bandwidth as its slope, and the message
overhead is the intercept minus the measured round trip (never below 0).

A NAV costs more than a probe of its size: the server's verify path (ordering, batching, the
session's KV bookkeeping) and the client's handling of the answer add to HTTP's own cost.
`nav_overhead` measures it the way the edge sends NAVs: verifies of 1..8 tokens in one
request, each round trip minus the target time and queueing the server reports, minus the
latency; its median is the per-message overhead a simulation of that testbed should use
(`calibrate link --testbed` does).

Through an emulated link (a relay adding a known one-way delay, realrun.link.shaping), pass that
delay as `emulated_latency_s`: the profile's latency is then that delay, and everything else
the real path adds to a message (HTTP, the relay's hops, the veth) becomes the per-message
overhead: overhead = intercept - 2 x emulated latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibrate.fit import fit_link
from calibrate.fit_report import FitReport
from calibrate.samples import TransferSample

CONTENT_TYPE = "application/msgpack"
TOKEN_HEADER = "X-PipeSD-Token"


@dataclass(frozen=True)
class LinkMeasurements:
    """Probe samples, round trips and the fitted link."""

    url: str
    samples: tuple[TransferSample, ...]
    round_trips_s: tuple[float, ...]
    one_way_latency_s: float
    overhead_s: float
    mbps: float
    report: FitReport


def probe_link(
    url: str,
    sizes: Sequence[int] = (1024, 65536, 262144, 1048576, 4000000),
    repetitions: int = 10,
    token: str | None = None,
    progress: Callable[[str], None] | None = None,
    emulated_latency_s: float | None = None,
    transport: Any = None,
) -> LinkMeasurements:
    """Time padded probes of each size and empty round trips against a running server
    (through `transport`, an httpx transport such as the software link shaper, if given)."""
    import httpx  # optional (extra 'realrun'): the testbed's HTTP client
    import msgpack  # optional (extra 'realrun'): the testbed's wire format

    headers = {"Content-Type": CONTENT_TYPE}
    if token:
        headers[TOKEN_HEADER] = token
    base = url.rstrip("/")
    with httpx.Client(timeout=30.0, transport=transport) as client:
        client.get(f"{base}/v1/health", headers=headers).raise_for_status()
        round_trips = []
        for _ in range(repetitions):
            start = time.perf_counter()
            client.get(f"{base}/v1/health", headers=headers).raise_for_status()
            round_trips.append(time.perf_counter() - start)
        samples = []
        for size in sizes:
            body = msgpack.packb({"pad": b"\0" * size})
            for _ in range(repetitions):
                start = time.perf_counter()
                response = client.post(f"{base}/v1/probe", content=body, headers=headers)
                elapsed = time.perf_counter() - start
                response.raise_for_status()
                samples.append(TransferSample(len(body), elapsed))
            if progress is not None:
                progress(f"probe {size} bytes x {repetitions}")
    overhead_and_rtt, mbps, report = fit_link(samples)
    rtt = min(round_trips) if emulated_latency_s is None else 2 * emulated_latency_s
    return LinkMeasurements(
        url=url,
        samples=tuple(samples),
        round_trips_s=tuple(round_trips),
        one_way_latency_s=rtt / 2,
        overhead_s=max(overhead_and_rtt - rtt, 0.0),
        mbps=mbps,
        report=report,
    )


@dataclass(frozen=True)
class NavOverhead:
    """Per-NAV overhead of the verify path: one sample per verify (seconds)."""

    samples: tuple[tuple[int, float], ...]
    """(tokens carried, round trip - target time - queueing - 2 x latency)."""
    overhead_s: float
    """The samples' median."""


def nav_overhead(
    url: str,
    latency_s: float,
    token_counts: Sequence[int] = (1, 2, 4, 8),
    repetitions: int = 10,
    token: str | None = None,
    transport: Any = None,
) -> NavOverhead:
    """Time `repetitions` NAVs (verify carrying n tokens, numbered as the edge numbers them)
    per n in `token_counts` on a fresh session of a running server; see the module docstring.
    `latency_s`: the one-way latency to subtract twice; `transport` as in `probe_link`."""
    from realrun.edge.client import CloudClient  # loads httpx (optional) when imported

    rows: list[tuple[int, float]] = []
    with CloudClient(url, token, transport=transport) as cloud:
        session = cloud.open(list(range(1000, 1032)))["session"]
        seq = 0
        for _ in range(repetitions):
            for n in token_counts:
                tokens = [1000 + (7 * seq + j) % 4096 for j in range(n)]
                start = time.perf_counter()
                answer = cloud.verify(session, n, tokens, [0.5] * n, seq=seq)
                elapsed = time.perf_counter() - start
                server_s = (answer["target_ms"] + answer.get("queued_ms", 0.0)) / 1e3
                rows.append((n, elapsed - server_s - 2 * latency_s))
                seq += 1
        cloud.close(session, seq=seq)
    return NavOverhead(tuple(rows), median_overhead([v for _, v in rows]))


def median_overhead(values: Sequence[float]) -> float:
    """The per-NAV overhead from NAV samples: their median, never below 0."""
    if not values:
        raise ValueError("no NAV samples")
    return max(float(np.median(np.asarray(values, dtype=float))), 0.0)
