"""Kernel link shaping: a network namespace for the cloud, a veth pair and two tbf qdiscs.

The edge side of the veth stays in the root namespace and its egress tbf is the uplink; the
cloud side lives in the namespace `pipesd-<pid>-<hex>` and its egress tbf is the downlink. A
replay thread changes the rates at a trace's time stamps. Needs root, `ip` and `tc`.

tbf parameters, for any rate from 1 to 1000 Mbit/s:
- rate: the link's rate x 1514/1448, so that TCP payload (1448 bytes in a 1514-byte frame with
  timestamps, MTU 1500) flows at the link's rate, as the simulator's messages do;
- burst: the link's token bucket (`burst_bytes` of payload, framed like the rate), but at least
  2 frames and 1 ms at the rate (tbf needs a frame's worth, and its timers ~1 ms): bytes may
  pass at line speed after an idle spell. `payload_burst` says what the simulator should model;
- limit: 8 MiB of queue, above Linux's per-socket cap on queued bytes (tcp_limit_output_bytes,
  4 MiB by default), so one TCP flow is shaped by queueing, never by drops and retransmits.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import math
import os
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from simulator.link import Bandwidth, TraceBandwidth

PREFIX = "pipesd-"
FRAME_BYTES = 1514
PAYLOAD_PER_FRAME = 1448
FRAMING = FRAME_BYTES / PAYLOAD_PER_FRAME
BURST_S = 1e-3
LIMIT_BYTES = 8 * 1024 * 1024
NEEDED_CAPS = ((12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN"))
"""Capability bits: qdiscs and veths need NET_ADMIN, `ip netns add` mounts (SYS_ADMIN)."""
SUBNET_BASE = ipaddress.IPv4Network("10.213.0.0/16")


class LinkSetupError(RuntimeError):
    """A shaping command failed (its command line and first error line are in the message)."""


@dataclass(frozen=True)
class TbfParams:
    """One tbf qdisc's parameters for a link rate in Mbit/s."""

    mbps: float
    rate_bit: int
    burst_bytes: int
    limit_bytes: int

    @classmethod
    def for_rate(cls, mbps: float, burst_payload_bytes: float = 0.0) -> TbfParams:
        rate_bit = max(1, round(mbps * 1e6 * FRAMING))
        burst = max(
            2 * FRAME_BYTES,
            math.ceil(rate_bit / 8 * BURST_S),
            math.ceil(burst_payload_bytes * FRAMING),
        )
        return cls(mbps, rate_bit, burst, max(LIMIT_BYTES, burst))

    @property
    def payload_burst(self) -> float:
        """The burst in payload bytes: the `burst_bytes` a simulation of this link uses."""
        return self.burst_bytes / FRAMING

    def args(self) -> list[str]:
        """The tc arguments after `qdisc add|change dev X root`."""
        rate, burst, limit = (
            str(self.rate_bit) + "bit",
            str(self.burst_bytes),
            str(self.limit_bytes),
        )
        return ["tbf", "rate", rate, "burst", burst, "limit", limit]


def unavailable_reason() -> str | None:
    """Why kernel shaping cannot be tried here (None: it can)."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"no {' or '.join(repr(t) for t in missing)} command"
    missing_caps = [name for bit, name in NEEDED_CAPS if not _effective_caps() >> bit & 1]
    if missing_caps:
        return f"this process lacks {' and '.join(missing_caps)} (run as root)"
    return None


def _effective_caps() -> int:
    """The process's effective capability bits (Linux), else all bits for root, none otherwise."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return -1 if os.geteuid() == 0 else 0


def run(*command: str) -> str:
    """Run an `ip`/`tc` command; LinkSetupError with its first error line if it fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkSetupError(f"{' '.join(command)}: {exc}") from None
    if done.returncode != 0:
        first = (done.stderr.strip() or done.stdout.strip() or "failed").splitlines()[0]
        raise LinkSetupError(f"{' '.join(command)}: {first}")
    return done.stdout


def namespaces() -> list[str]:
    """Names of the network namespaces that exist now."""
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_namespaces() -> list[str]:
    """Delete `pipesd-<pid>-*` namespaces whose process is gone; returns their names.

    Deleting a namespace also removes its veth pair (and with it the uplink qdisc).
    """
    removed = []
    for name in namespaces():
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX) :].split("-")[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(LinkSetupError):
            run("ip", "netns", "delete", name)
            removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.213.0.0/16 that no address of the root namespace falls in."""
    used = [
        ipaddress.IPv4Interface(word)
        for line in run("ip", "-o", "-4", "addr", "show").splitlines()
        for before, word in zip(line.split(), line.split()[1:], strict=False)
        if before == "inet"
    ]
    subnets = list(SUBNET_BASE.subnets(new_prefix=30))
    for _ in range(64):
        subnet = random.choice(subnets)
        if not any(address.network.overlaps(subnet) for address in used):
            return subnet
    raise LinkSetupError("no free /30 in 10.213.0.0/16 for the veth pair")


class Namespace:
    """The cloud's namespace, the veth pair and the two tbf qdiscs; `delete()` undoes all."""

    def __init__(self, uplink_mbps: float, downlink_mbps: float, burst_bytes: float = 0.0) -> None:
        tag = secrets.token_hex(3)
        self.name = f"{PREFIX}{os.getpid()}-{tag}"
        self.edge_dev, self.cloud_dev = f"pse{tag}", f"psc{tag}"
        subnet = _free_subnet()
        edge, cloud = list(subnet.hosts())
        self.edge_address, self.cloud_address = str(edge), str(cloud)
        self.burst_request = burst_bytes
        self.uplink = TbfParams.for_rate(uplink_mbps, burst_bytes)
        self.downlink = TbfParams.for_rate(downlink_mbps, burst_bytes)
        self._lock = threading.Lock()
        try:
            self._create(subnet.prefixlen)
        except BaseException:
            self.delete()
            raise

    def _create(self, prefix: int) -> None:
        ns = self.name
        run("ip", "netns", "add", ns)
        peer = ("peer", "name", self.cloud_dev, "netns", ns)
        run("ip", "link", "add", self.edge_dev, "type", "veth", *peer)
        run("ip", "addr", "add", f"{self.edge_address}/{prefix}", "dev", self.edge_dev)
        run("ip", "-n", ns, "addr", "add", f"{self.cloud_address}/{prefix}", "dev", self.cloud_dev)
        run("ip", "link", "set", self.edge_dev, "up")
        run("ip", "-n", ns, "link", "set", self.cloud_dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("tc", "qdisc", "add", "dev", self.edge_dev, "root", *self.uplink.args())
        run("tc", "-n", ns, "qdisc", "add", "dev", self.cloud_dev, "root", *self.downlink.args())

    def set_rate(self, direction: str, mbps: float) -> None:
        """Change one direction's tbf to `mbps` (`direction`: uplink or downlink)."""
        params = TbfParams.for_rate(mbps, self.burst_request)
        with self._lock:
            if direction == "uplink":
                run("tc", "qdisc", "change", "dev", self.edge_dev, "root", *params.args())
                self.uplink = params
            else:
                netns = ("-n", self.name)
                run("tc", *netns, "qdisc", "change", "dev", self.cloud_dev, "root", *params.args())
                self.downlink = params

    def uplink_sent(self) -> tuple[int, int]:
        """(bytes, packets) the uplink tbf has sent so far: every frame the edge put on the
        link (requests, TCP/IP headers, ACKs), as tc's counters say."""
        return qdisc_sent(["tc", "-s", "qdisc", "show", "dev", self.edge_dev])

    def downlink_sent(self) -> tuple[int, int]:
        """(bytes, packets) the downlink tbf has sent so far."""
        return qdisc_sent(["tc", "-n", self.name, "-s", "qdisc", "show", "dev", self.cloud_dev])

    def exec_prefix(self) -> list[str]:
        """Command prefix that runs a process inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def describe(self) -> dict[str, object]:
        with self._lock:
            uplink, downlink = asdict(self.uplink), asdict(self.downlink)
        return {
            "namespace": self.name,
            "edge_device": self.edge_dev,
            "cloud_device": self.cloud_dev,
            "edge_address": self.edge_address,
            "cloud_address": self.cloud_address,
            "uplink_tbf": uplink,
            "downlink_tbf": downlink,
            "payload_burst_bytes": {
                "uplink": self.uplink.payload_burst,
                "downlink": self.downlink.payload_burst,
                "requested": self.burst_request,
                "note": "a simulation of this link should use link.burst_bytes = these values",
            },
            "tbf_rules": (
                f"rate = link rate x {FRAME_BYTES}/{PAYLOAD_PER_FRAME} (TCP payload at the link "
                f"rate); burst = max({2 * FRAME_BYTES} B, {BURST_S * 1e3:g} ms at the rate, "
                f"link burst_bytes x {FRAME_BYTES}/{PAYLOAD_PER_FRAME}); "
                f"limit = {LIMIT_BYTES} B"
            ),
        }

    def delete(self) -> None:
        """Remove the namespace (and with it both veth ends); idempotent."""
        with contextlib.suppress(LinkSetupError):
            run("ip", "link", "delete", self.edge_dev)
        with contextlib.suppress(LinkSetupError):
            run("ip", "netns", "delete", self.name)


def qdisc_sent(command: list[str]) -> tuple[int, int]:
    """(bytes, packets) from the "Sent B bytes P pkt" line of a `tc -s qdisc show` command."""
    out = run(*command)
    match = re.search(r"Sent (\d+) bytes (\d+) pkt", out)
    if match is None:
        raise LinkSetupError(f"no qdisc counters in `{' '.join(command)}`")
    return int(match.group(1)), int(match.group(2))


def rate_changes(bandwidth: Bandwidth, direction: str) -> Iterator[tuple[float, str, float]]:
    """(time, direction, Mbit/s) at each step of a trace after t = 0, looping like the trace."""
    if not isinstance(bandwidth, TraceBandwidth):
        return
    cycle = 0
    while True:
        offset = cycle * bandwidth.period
        for t, mbps in zip(bandwidth.times, bandwidth.mbps, strict=True):
            if offset + t > 0:
                yield offset + t, direction, mbps
        if not bandwidth.repeat:
            return
        cycle += 1


class RateReplay:
    """A daemon thread that calls `apply(direction, mbps)` at the traces' time stamps."""

    def __init__(
        self, uplink: Bandwidth, downlink: Bandwidth, apply: Callable[[str, float], None]
    ) -> None:
        self.uplink, self.downlink, self.apply = uplink, downlink, apply
        self.changes = 0
        self.max_lag_s = 0.0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        """Start replaying with t = 0 now."""
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        current = {"uplink": self.uplink.at(0.0), "downlink": self.downlink.at(0.0)}
        events = heapq.merge(
            rate_changes(self.uplink, "uplink"), rate_changes(self.downlink, "downlink")
        )
        for t, direction, mbps in events:
            if self._stop.wait(max(0.0, self._t0 + t - time.monotonic())):
                return
            if mbps == current[direction]:
                continue
            try:
                self.apply(direction, mbps)
            except LinkSetupError as exc:
                if len(self.errors) < 10:
                    self.errors.append(str(exc))
                continue
            current[direction] = mbps
            self.changes += 1
            self.max_lag_s = max(self.max_lag_s, time.monotonic() - self._t0 - t)

    def stop(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def describe(self) -> dict[str, object]:
        return {"changes": self.changes, "max_lag_s": self.max_lag_s, "errors": list(self.errors)}


__all__ = [
    "LinkSetupError",
    "Namespace",
    "RateReplay",
    "TbfParams",
    "cleanup_stale_namespaces",
    "namespaces",
    "rate_changes",
    "unavailable_reason",
]
