"""Bytes on the wire per testbed message, read from the kernel's tbf counters.

The simulator charges a message `message_header_bytes` plus its payload at the link's rate.
On the testbed every NAV is one HTTP request and its answer, and the shaper (tbf) charges
everything that crosses the link: HTTP headers, TCP/IP headers and ACKs, the msgpack
envelope (session id, keys). `measure_wire` runs the kit's own server in a namespace behind
tbf (realrun.link.shaping, a fast rate so nothing queues), sends `messages` NAVs of `n_tokens`
(token id + probability each, as the edge sends them), reads `tc -s qdisc` before and after,
and converts wire bytes to the simulator's payload bytes (tbf's rate is the link rate x
frame/payload, see realrun.link.netns). Then

    message_header_bytes = wire payload bytes per uplink message - n_tokens x per-token bytes,

where a token costs its msgpack size (an id below 2^16 is 3 bytes) plus a float64 (9 bytes).

Not every uplink byte of a NAV goes before it: a packet capture on the edge's veth (an
AF_PACKET socket, `PacketTap`) shows the request as data frames, then, once the answer's
frames arrive, the edge's pure ACKs of them. Their share of the uplink frame bytes gives
`message_ack_bytes` (the simulator sends them after the answer, `Channel.defer`), and
message_header_bytes is what is left before the message. The NAVs are `pause_s` apart, as an
edge drafts between them (back to back, an ACK may ride on the next request instead).
Needs root with `ip` and `tc` (ConfigError saying why otherwise).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from realrun.link import netns
from simulator.errors import ConfigError
from simulator.link import ConstantBandwidth

PROBABILITY_BYTES = 9
"""A msgpack float64."""


def msgpack_int_bytes(vocab_size: int) -> int:
    """Bytes msgpack needs for the largest token id of a vocabulary (uint8/16/32)."""
    largest = vocab_size - 1
    if largest < 128:
        return 1
    if largest < 256:
        return 2
    if largest < 65536:
        return 3
    return 5


@dataclass(frozen=True)
class WireMeasurement:
    """Per-message bytes of one direction, from tbf's counters."""

    messages: int
    n_tokens: int
    uplink_wire_bytes: float
    uplink_packets: float
    uplink_body_bytes: float
    downlink_wire_bytes: float
    downlink_packets: float
    downlink_body_bytes: float
    framing: float
    uplink_ack_share: float = 0.0
    """Share of the uplink frame bytes in pure ACKs (no TCP payload), from `PacketTap`."""

    @property
    def uplink_payload_bytes(self) -> float:
        """Uplink wire bytes per message in the simulator's (payload) bytes."""
        return self.uplink_wire_bytes / self.framing

    @property
    def downlink_payload_bytes(self) -> float:
        return self.downlink_wire_bytes / self.framing

    @property
    def uplink_ack_bytes(self) -> float:
        """Uplink payload bytes per message sent after its answer (its ACKs)."""
        return self.uplink_ack_share * self.uplink_payload_bytes


ETH_P_ALL = 0x0003
ETH_P_IP = b"\x08\x00"


class PacketTap:
    """Frames crossing a network device, in a thread (an AF_PACKET socket; needs root):
    `frames` holds (source IPv4 address, frame bytes, TCP payload bytes) of each TCP frame."""

    def __init__(self, device: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self.sock.bind((device, 0))
        self.sock.settimeout(0.1)
        self.frames: list[tuple[str, int, int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pipesd-packet-tap", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            if len(frame) < 54 or frame[12:14] != ETH_P_IP or frame[23] != socket.IPPROTO_TCP:
                continue
            header = (frame[14] & 0x0F) * 4
            total = struct.unpack("!H", frame[16:18])[0]
            tcp_header = (frame[14 + header + 12] >> 4) * 4
            source = socket.inet_ntoa(frame[26:30])
            self.frames.append((source, len(frame), total - header - tcp_header))

    def close(self) -> list[tuple[str, int, int]]:
        self.stopped.set()
        self.thread.join()
        self.sock.close()
        return self.frames


def ack_share(frames: list[tuple[str, int, int]], source: str) -> float:
    """Share of `source`'s frame bytes in pure ACKs (frames without TCP payload)."""
    sent = [(size, payload) for src, size, payload in frames if src == source]
    total = sum(size for size, _ in sent)
    return sum(size for size, payload in sent if payload == 0) / total if total else 0.0


def measure_wire(
    model: str,
    threads: int = 1,
    n_tokens: int = 4,
    messages: int = 40,
    port: int = 8731,
    say: Callable[[str], None] = print,
    pause_s: float = 0.03,
) -> WireMeasurement:
    """NAVs of `n_tokens` through a tbf link to a server holding `model`; see the module."""
    import httpx  # optional (extra 'realrun'), as the three below that load it or msgpack

    from realrun.edge.client import CloudClient  # loads httpx
    from realrun.link.shaping import LinkSpec, open_link  # loads httpx
    from realrun.protocol import encode  # loads msgpack

    reason = netns.unavailable_reason()
    if reason is not None:
        raise ConfigError("calibrate wire", "", f"needs kernel shaping: {reason}")
    spec = LinkSpec(ConstantBandwidth(100.0), ConstantBandwidth(100.0), 0.0)
    with open_link(spec, "tbf", server_port=port) as link:
        namespace = link.namespace
        command = [sys.executable, "-m", "realrun.cloud.server", "--model", model]
        command += ["--threads", str(threads), "--host", link.server_host, "--port", str(port)]
        server = subprocess.Popen(link.server_command_prefix + command, stderr=subprocess.DEVNULL)
        try:
            url = link.client_url(port)
            deadline = time.monotonic() + 120
            while True:
                try:
                    httpx.get(url + "/v1/health", timeout=1.0).raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise ConfigError("--model", model, "the server did not start") from None
                    time.sleep(0.2)
            with CloudClient(url) as cloud:
                session = cloud.open(list(range(1000, 1016)))["session"]
                time.sleep(pause_s)
                tap = PacketTap(namespace.edge_dev)
                try:
                    up0, down0 = namespace.uplink_sent(), namespace.downlink_sent()
                    body_up = body_down = 0
                    for i in range(messages):
                        tokens = [1000 + 7 * i + j for j in range(n_tokens)]
                        probs = [0.5 + 0.01 * j for j in range(n_tokens)]
                        request = {"session": session, "n": n_tokens, "tokens": tokens}
                        body_up += len(encode({**request, "probs": probs}))
                        body_down += len(encode(cloud.verify(session, n_tokens, tokens, probs)))
                        time.sleep(pause_s)
                    up1, down1 = namespace.uplink_sent(), namespace.downlink_sent()
                finally:
                    frames = tap.close()
                share = ack_share(frames, namespace.edge_address)
            say(f"wire: {messages} NAVs of {n_tokens} tokens through tbf")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return WireMeasurement(
        messages=messages,
        n_tokens=n_tokens,
        uplink_wire_bytes=(up1[0] - up0[0]) / messages,
        uplink_packets=(up1[1] - up0[1]) / messages,
        uplink_body_bytes=body_up / messages,
        downlink_wire_bytes=(down1[0] - down0[0]) / messages,
        downlink_packets=(down1[1] - down0[1]) / messages,
        downlink_body_bytes=body_down / messages,
        framing=netns.FRAMING,
        uplink_ack_share=share,
    )


def payload_values(m: WireMeasurement, vocab_size: int) -> dict[str, Any]:
    """The profile's payload fields this measurement gives (dotted names, as parts hold them)."""
    token_bytes = msgpack_int_bytes(vocab_size)
    tokens = m.n_tokens * (token_bytes + PROBABILITY_BYTES)
    header = m.uplink_payload_bytes - m.uplink_ack_bytes - tokens
    return {
        "payload.vocab_size": vocab_size,
        "payload.token_id_bytes": token_bytes,
        "payload.probability_bytes": PROBABILITY_BYTES,
        "payload.message_header_bytes": max(0, round(header)),
        "payload.message_ack_bytes": round(m.uplink_ack_bytes),
    }


__all__ = [
    "PacketTap",
    "WireMeasurement",
    "ack_share",
    "measure_wire",
    "msgpack_int_bytes",
    "payload_values",
]
