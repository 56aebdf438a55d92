"""One edge's own shaped link on a many-edge testbed: the edge in a namespace, the cloud outside.

realrun.link.netns.Namespace puts one side of a tbf-shaped veth pair into a namespace; here the
edge's process lives there (`exec_prefix`) and the cloud server stays in the root namespace, so
every edge has its own link (its own rates, bursts and latency) to the one server. The veth's
root-side end carries the cloud's answers to the edge (its egress tbf is the downlink), the
namespace's end the edge's requests (the uplink). A delay relay (realrun.link.relay) listens on
the root-side address and forwards to the server on loopback after the one-way latency, each
way; the edge talks to `url`. Namespaces are named `pipesd-<pid>-...`: whatever a killed run
leaves, realrun.link.netns.cleanup_stale_namespaces (and realrun.link.reaper) removes.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from realrun.link.netns import FRAMING, Namespace, RateReplay, qdisc_sent
from realrun.link.relay import DelayRelay
from realrun.link.shaping import LinkSpec, describe_bandwidth
from simulator.link import TraceBandwidth


class EdgeLink:
    """Edge `index`'s namespace, tbf qdiscs and relay to a server on 127.0.0.1:`server_port`."""

    kind = "tbf-netns-edge"

    def __init__(self, index: int, spec: LinkSpec, server_port: int) -> None:
        self.index, self.spec = index, spec
        # the root-side end's egress goes to the edge: Namespace's "uplink" is our downlink
        self.namespace = Namespace(spec.downlink.at(0.0), spec.uplink.at(0.0), spec.burst_bytes)
        self.replay: RateReplay | None = None
        try:
            self.relay = DelayRelay(
                "127.0.0.1", server_port, spec.one_way_latency_s, self.namespace.edge_address
            ).start()
        except BaseException:
            self.namespace.delete()
            raise

    @property
    def url(self) -> str:
        """The server's URL as the edge (inside its namespace) reaches it."""
        return f"http://{self.namespace.edge_address}:{self.relay.port}"

    def exec_prefix(self) -> list[str]:
        """Command prefix that runs the edge's process in its namespace."""
        return self.namespace.exec_prefix()

    def start_clock(self) -> None:
        """t = 0 of the link's bandwidth traces (if any): replay them from now."""
        if isinstance(self.spec.uplink, TraceBandwidth) or isinstance(
            self.spec.downlink, TraceBandwidth
        ):
            self.replay = RateReplay(self.spec.uplink, self.spec.downlink, self._set_rate)
            self.replay.start()

    def _set_rate(self, direction: str, mbps: float) -> None:
        swapped = "downlink" if direction == "uplink" else "uplink"
        self.namespace.set_rate(swapped, mbps)

    @property
    def uplink_device(self) -> str:
        """The veth end inside the edge's namespace: its egress tbf is the uplink (the edge
        reads its counter from inside: `uplink_meter`)."""
        return self.namespace.cloud_dev

    def describe(self) -> dict[str, Any]:
        """The edge's link for the manifest (its tbf qdiscs under their true directions)."""
        ns = self.namespace
        return {
            "kind": self.kind,
            "edge": self.index,
            "uplink": describe_bandwidth(self.spec.uplink),
            "downlink": describe_bandwidth(self.spec.downlink),
            "one_way_latency_s": self.spec.one_way_latency_s,
            "burst_bytes": self.spec.burst_bytes,
            "namespace": ns.name,
            "uplink_tbf": asdict(ns.downlink),
            "downlink_tbf": asdict(ns.uplink),
            "server_address": f"{ns.edge_address}:{self.relay.port} (relay)",
            "trace_replay": self.replay.describe() if self.replay else None,
        }

    def close(self) -> None:
        """Stop the replay and the relay, delete the namespace (idempotent)."""
        if self.replay is not None:
            self.replay.stop()
        self.relay.close()
        self.namespace.delete()


def uplink_meter(device: str) -> float:
    """Payload bytes sent so far through `device`'s tbf (run inside the edge's namespace):
    frames, headers and ACKs included, in the simulator's units (realrun.link.netns)."""
    return qdisc_sent(["tc", "-s", "qdisc", "show", "dev", device])[0] / FRAMING


__all__ = ["EdgeLink", "uplink_meter"]
