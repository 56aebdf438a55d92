"""The scenario's link between the testbed's edge and cloud, reproduced with real mechanisms.

Three kinds: "tbf-netns" (the server runs in its own network namespace behind a veth pair
whose tbf qdiscs set the uplink and downlink rates, trace-driven; a user-space relay adds the
one-way latency, as this kernel has no netem; realrun.link.netns, realrun.link.relay),
"software" (an httpx transport that holds bodies back by the same channel arithmetic as the
simulator; realrun.link.softlink) and "none" (plain loopback). Many edges, each with its own
link: realrun.link.edge_link.

    with open_link(LinkSpec.from_point(point), "auto", server_port=p) as link:
        server = Popen(link.server_command_prefix + [..., "--host", link.server_host, ...])
        client = CloudClient(link.client_url(p), transport=link.transport())
        link.start_clock()
        ...  # stop the server before the link closes

`python -m realrun.link.linkcheck` measures what a link actually delivers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from realrun.link.netns import (
    FRAMING,
    LinkSetupError,
    Namespace,
    RateReplay,
    cleanup_stale_namespaces,
    unavailable_reason,
)
from realrun.link.relay import DelayRelay
from realrun.link.softlink import LinkClock, ShapedTransport
from simulator.errors import ConfigError
from simulator.fleet import edge_specs
from simulator.link import Bandwidth, ConstantBandwidth, TraceBandwidth
from simulator.scenario import SweepPoint

MODES = ("auto", "tbf", "software", "none")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LinkSpec:
    """The link of one edge: bandwidths (constant or trace), one-way latency, overheads.

    The per-message overheads are recorded (describe) but not emulated: on the testbed the
    real stack's own per-message cost takes their place.
    """

    uplink: ConstantBandwidth | TraceBandwidth
    downlink: ConstantBandwidth | TraceBandwidth
    one_way_latency_s: float
    uplink_overhead_s: float = 0.0
    downlink_overhead_s: float = 0.0
    burst_bytes: float = 0.0
    """Token bucket per direction (payload bytes), as in simulator.link.Channel."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.one_way_latency_s) and self.one_way_latency_s >= 0):
            raise ValueError(
                f"one_way_latency_s must be finite and >= 0 (got {self.one_way_latency_s})"
            )

    @classmethod
    def from_point(cls, point: SweepPoint) -> LinkSpec:
        """Edge 0's link at a scenario point, resolved exactly as the simulator resolves it."""
        scenario = point.scenario
        edge = edge_specs(scenario, scenario.model.seeds[0])[0]
        return cls(
            uplink=edge.uplink,
            downlink=edge.downlink,
            one_way_latency_s=edge.one_way_latency_s,
            uplink_overhead_s=edge.uplink_overhead_s,
            downlink_overhead_s=edge.downlink_overhead_s,
            burst_bytes=edge.burst_bytes,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "uplink": describe_bandwidth(self.uplink),
            "downlink": describe_bandwidth(self.downlink),
            "one_way_latency_s": self.one_way_latency_s,
            "burst_bytes": self.burst_bytes,
            "overheads_not_emulated": {
                "uplink_overhead_s": self.uplink_overhead_s,
                "downlink_overhead_s": self.downlink_overhead_s,
            },
        }


def describe_bandwidth(bandwidth: Bandwidth) -> dict[str, Any]:
    """A bandwidth for a manifest: its rate, or its trace file and range."""
    if isinstance(bandwidth, TraceBandwidth):
        return {
            "trace": bandwidth.source,
            "repeat": bandwidth.repeat,
            "period_s": bandwidth.period if bandwidth.repeat else None,
            "steps": len(bandwidth.times),
            "mbps_min": min(bandwidth.mbps),
            "mbps_max": max(bandwidth.mbps),
        }
    return {"mbps": bandwidth.mbps}


class ShapedLink:
    """An unshaped loopback link (kind "none"); the base of the shaped kinds. Context manager."""

    kind = "none"

    def __init__(self, spec: LinkSpec, server_port: int, server_host: str = LOOPBACK) -> None:
        self.spec = spec
        self.server_port = server_port
        self.server_host = server_host
        self.server_command_prefix: list[str] = []

    def client_url(self, port: int) -> str:
        """The URL the edge uses to reach a server listening on `port`."""
        return f"http://{self.server_host}:{port}"

    def transport(self) -> httpx.BaseTransport | None:
        """The software shaper for the edge's client, or None (the network shapes)."""
        return None

    def start_clock(self) -> None:
        """t = 0 of trace replay (call when the run starts)."""

    def uplink_payload_bytes(self) -> float | None:
        """Bytes the edge has put on the uplink so far, in the simulator's units (payload
        bytes: what a `message_header_bytes` + per-token model charges); None where the link
        cannot count them."""
        return None

    def describe(self) -> dict[str, Any]:
        """What was used, for the run's manifest."""
        return {"kind": self.kind, **self.spec.describe(), "server_port": self.server_port}

    def close(self) -> None:
        """Undo everything set up (idempotent)."""

    def __enter__(self) -> ShapedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SoftwareLink(ShapedLink):
    """Loopback, with every client's transport delaying bodies by the link's arithmetic."""

    kind = "software"

    def __init__(self, spec: LinkSpec, server_port: int, fallback_reason: str | None) -> None:
        super().__init__(spec, server_port)
        self.fallback_reason = fallback_reason
        self.clock = LinkClock(spec.uplink, spec.downlink, spec.one_way_latency_s, spec.burst_bytes)

    def transport(self) -> httpx.BaseTransport:
        """A new transport on the link's shared channels (each client closes its own)."""
        return ShapedTransport(self.clock)

    def start_clock(self) -> None:
        self.clock.start()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["shaped"] = "request and response bodies (headers unshaped)"
        if self.fallback_reason:
            info["fallback_reason"] = self.fallback_reason
        return info


class NetnsLink(ShapedLink):
    """The server in a namespace behind tbf-shaped veths; a relay adds the latency.

    Namespaces left by killed runs (their process gone) are deleted first.
    """

    kind = "tbf-netns"

    def __init__(self, spec: LinkSpec, server_port: int) -> None:
        self.stale_removed = cleanup_stale_namespaces()
        self.namespace = Namespace(spec.uplink.at(0.0), spec.downlink.at(0.0), spec.burst_bytes)
        self.relay: DelayRelay | None = None
        self.replay: RateReplay | None = None
        try:
            super().__init__(spec, server_port, self.namespace.cloud_address)
            self.server_command_prefix = self.namespace.exec_prefix()
            if spec.one_way_latency_s > 0:
                self.relay = DelayRelay(
                    self.namespace.cloud_address, server_port, spec.one_way_latency_s
                ).start()
        except BaseException:
            self.close()
            raise

    def client_url(self, port: int) -> str:
        if self.relay is None:
            return super().client_url(port)
        if port != self.server_port:
            raise ValueError(f"the delay relay forwards to port {self.server_port}, not {port}")
        return f"http://{LOOPBACK}:{self.relay.port}"

    def start_clock(self) -> None:
        if self.replay is not None:
            self.replay.stop()
            for direction in ("uplink", "downlink"):
                self.namespace.set_rate(direction, getattr(self.spec, direction).at(0.0))
        if isinstance(self.spec.uplink, TraceBandwidth) or isinstance(
            self.spec.downlink, TraceBandwidth
        ):
            self.replay = RateReplay(self.spec.uplink, self.spec.downlink, self.namespace.set_rate)
            self.replay.start()

    def uplink_payload_bytes(self) -> float | None:
        """tbf's counter of the uplink (frames, ACKs included) / FRAMING (realrun.link.netns)."""
        return self.namespace.uplink_sent()[0] / FRAMING

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["tbf"] = self.namespace.describe()
        info["stale_namespaces_removed"] = self.stale_removed
        info["relay"] = (
            {"listen": f"{LOOPBACK}:{self.relay.port}", "delay_s": self.relay.delay_s}
            if self.relay
            else None
        )
        info["trace_replay"] = self.replay.describe() if self.replay else None
        return info

    def close(self) -> None:
        if self.replay is not None:
            self.replay.stop()
        if self.relay is not None:
            self.relay.close()
        self.namespace.delete()


def open_link(spec: LinkSpec, mode: str = "auto", server_port: int = 8600) -> ShapedLink:
    """Set up the link (see the module docstring); bad mode or port -> ConfigError.

    "auto" uses tbf-netns where this process is root and `ip`/`tc` work, else software (its
    describe() says why); "tbf" refuses to fall back.
    """
    if mode not in MODES:
        raise ConfigError("link", "mode", f"unknown value {mode!r} (allowed: {', '.join(MODES)})")
    if not 1 <= server_port <= 65535:
        raise ConfigError("link", "server_port", f"must be in 1..65535 (got {server_port})")
    if mode == "none":
        return ShapedLink(spec, server_port)
    if mode == "software":
        return SoftwareLink(spec, server_port, None)
    reason = unavailable_reason()
    if reason is None:
        try:
            return NetnsLink(spec, server_port)
        except LinkSetupError as exc:
            reason = f"tbf-netns setup failed: {exc}"
    if mode == "tbf":
        raise ConfigError("link", "mode", f"'tbf' is not available here: {reason}")
    return SoftwareLink(spec, server_port, reason)


__all__ = [
    "MODES",
    "LinkSpec",
    "ShapedLink",
    "cleanup_stale_namespaces",
    "describe_bandwidth",
    "open_link",
]
