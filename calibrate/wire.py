"""Bytes on the wire per testbed message, read from the kernel's tbf counters.

The simulator charges a message `message_header_bytes` plus its payload at the link's rate.
On the testbed every NAV is one HTTP request and its answer, and the shaper (tbf) charges
everything that crosses the link: HTTP headers, TCP/IP headers and ACKs, the msgpack
envelope (session id, keys). `measure_wire` runs the kit's own server in a namespace behind
tbf (realrun.shaping, a fast rate so nothing queues), sends `messages` NAVs of `n_tokens`
(token id + probability each, as the edge sends them), reads `tc -s qdisc` before and after,
and converts wire bytes to the simulator's payload bytes (tbf's rate is the link rate x
frame/payload, see realrun.netns). Then

    message_header_bytes = wire payload bytes per uplink message - n_tokens x per-token bytes,

where a token costs its msgpack size (an id below 2^16 is 3 bytes) plus a float64 (9 bytes).
Needs root with `ip` and `tc` (ConfigError saying why otherwise).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator.errors import ConfigError

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

    @property
    def uplink_payload_bytes(self) -> float:
        """Uplink wire bytes per message in the simulator's (payload) bytes."""
        return self.uplink_wire_bytes / self.framing

    @property
    def downlink_payload_bytes(self) -> float:
        return self.downlink_wire_bytes / self.framing


def measure_wire(
    model: str,
    threads: int = 1,
    n_tokens: int = 4,
    messages: int = 40,
    port: int = 8731,
    say: Callable[[str], None] = print,
) -> WireMeasurement:
    """NAVs of `n_tokens` through a tbf link to a server holding `model`; see the module."""
    import httpx

    from realrun import netns
    from realrun.client import CloudClient
    from realrun.protocol import encode
    from realrun.shaping import LinkSpec, open_link
    from simulator.link import ConstantBandwidth

    reason = netns.unavailable_reason()
    if reason is not None:
        raise ConfigError("calibrate wire", "", f"needs kernel shaping: {reason}")
    spec = LinkSpec(ConstantBandwidth(100.0), ConstantBandwidth(100.0), 0.0)
    with open_link(spec, "tbf", server_port=port) as link:
        namespace = link.namespace
        command = [sys.executable, "-m", "realrun.server", "--model", model]
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
                up0, down0 = namespace.uplink_sent(), namespace.downlink_sent()
                body_up = body_down = 0
                for i in range(messages):
                    tokens = [1000 + 7 * i + j for j in range(n_tokens)]
                    probs = [0.5 + 0.01 * j for j in range(n_tokens)]
                    request = {"session": session, "n": n_tokens, "tokens": tokens}
                    body_up += len(encode({**request, "probs": probs}))
                    body_down += len(encode(cloud.verify(session, n_tokens, tokens, probs)))
                up1, down1 = namespace.uplink_sent(), namespace.downlink_sent()
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
    )


def payload_values(m: WireMeasurement, vocab_size: int) -> dict[str, Any]:
    """The profile's payload fields this measurement gives (dotted names, as parts hold them)."""
    token_bytes = msgpack_int_bytes(vocab_size)
    header = m.uplink_payload_bytes - m.n_tokens * (token_bytes + PROBABILITY_BYTES)
    return {
        "payload.vocab_size": vocab_size,
        "payload.token_id_bytes": token_bytes,
        "payload.probability_bytes": PROBABILITY_BYTES,
        "payload.message_header_bytes": max(0, round(header)),
    }


__all__ = ["WireMeasurement", "measure_wire", "msgpack_int_bytes", "payload_values"]
