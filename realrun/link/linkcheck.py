"""Measure what a shaped link delivers: round trip, uplink and downlink rate, per link kind.

The probe server (realrun.link.probeapp: counts the request body, answers `?n=` bytes) is started
where the link puts the cloud (inside the namespace for tbf-netns); the client times empty
round trips and bodies sized to take about `seconds` at the link's rate at t = 0.
Rate = body bits / (median transfer time - median round trip).

    python -m realrun.link.linkcheck --uplink-mbps 10 --downlink-mbps 50 --latency-ms 20
    python -m realrun.link.linkcheck --scenario scenarios/pipesd_s4.toml --mode both --json
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from realrun.link.probeapp import MAX_PROBE_BYTES
from realrun.link.shaping import LinkSpec, ShapedLink, open_link
from simulator.errors import ConfigError
from simulator.link import ConstantBandwidth
from simulator.scenario import expand_sweep


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def probe_server(link: ShapedLink, port: int, timeout_s: float = 30.0) -> Iterator[str]:
    """Run the probe server where `link` puts the cloud; yields the URL the edge uses."""
    command = [
        *link.server_command_prefix,
        *(sys.executable, "-m", "realrun.link.probeapp"),
        *("--host", link.server_host, "--port", str(port)),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = link.client_url(port)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"probe server exited: {error.strip()[-500:]}")
            try:
                if httpx.get(f"{url}/probe", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"probe server not reachable at {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _timed(client: httpx.Client, method: str, content: bytes = b"", n: int = 0) -> float:
    start = time.perf_counter()
    response = client.request(method, "/probe", content=content, params={"n": n})
    response.raise_for_status()
    if len(response.content) != n or response.headers["x-received"] != str(len(content)):
        raise RuntimeError("probe server returned the wrong number of bytes")
    return time.perf_counter() - start


def measure(
    link: ShapedLink, url: str, seconds: float = 1.0, repeats: int = 3, round_trips: int = 10
) -> dict[str, Any]:
    """Time round trips and transfers over `link` against a running probe server at `url`."""
    spec = link.spec
    sizes = {
        direction: min(MAX_PROBE_BYTES, max(16_384, int(bw.at(0.0) * 1e6 / 8 * seconds)))
        for direction, bw in (("uplink", spec.uplink), ("downlink", spec.downlink))
    }
    with httpx.Client(base_url=url, transport=link.transport(), timeout=600.0) as client:
        _timed(client, "GET")  # connect outside the measurement
        link.start_clock()
        rtt = [_timed(client, "GET") for _ in range(round_trips)]
        up = [_timed(client, "POST", content=bytes(sizes["uplink"])) for _ in range(repeats)]
        down = [_timed(client, "GET", n=sizes["downlink"]) for _ in range(repeats)]
    rtt_s = statistics.median(rtt)

    def rate(direction: str, times: list[float]) -> float:
        return sizes[direction] * 8 / max(statistics.median(times) - rtt_s, 1e-9) / 1e6

    return {
        "kind": link.kind,
        "rtt_ms": rtt_s * 1e3,
        "rtt_min_ms": min(rtt) * 1e3,
        "rtt_spec_ms": 2e3 * spec.one_way_latency_s,
        "uplink_mbps": rate("uplink", up),
        "uplink_spec_mbps": spec.uplink.at(0.0),
        "uplink_bytes": sizes["uplink"],
        "downlink_mbps": rate("downlink", down),
        "downlink_spec_mbps": spec.downlink.at(0.0),
        "downlink_bytes": sizes["downlink"],
        "link": link.describe(),
    }


def measure_spec(
    spec: LinkSpec, mode: str, port: int = 0, seconds: float = 1.0, repeats: int = 3
) -> dict[str, Any]:
    """Open a link of `mode`, run the probe server behind it and measure it."""
    port = port or free_port()
    with open_link(spec, mode, server_port=port) as link, probe_server(link, port) as url:
        return measure(link, url, seconds=seconds, repeats=repeats)


def _spec_from_args(args: argparse.Namespace) -> LinkSpec:
    if args.scenario:
        return LinkSpec.from_point(expand_sweep(args.scenario, args.overrides)[0])
    for flag, value, low in (
        ("--uplink-mbps", args.uplink_mbps, 0.0),
        ("--downlink-mbps", args.downlink_mbps, 0.0),
    ):
        if not value > low:
            raise ConfigError(flag, "", f"must be > 0 (got {value})")
    if not args.latency_ms >= 0:
        raise ConfigError("--latency-ms", "", f"must be >= 0 (got {args.latency_ms})")
    return LinkSpec(
        ConstantBandwidth(args.uplink_mbps),
        ConstantBandwidth(args.downlink_mbps),
        args.latency_ms / 1e3,
    )


def _row(result: dict[str, Any]) -> str:
    r = result
    return (
        f"{r['kind']:>10}  rtt {r['rtt_ms']:7.1f} ms (spec {r['rtt_spec_ms']:.1f})  "
        f"up {r['uplink_mbps']:8.2f} Mbit/s (spec {r['uplink_spec_mbps']:g})  "
        f"down {r['downlink_mbps']:8.2f} Mbit/s (spec {r['downlink_spec_mbps']:g})"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m realrun.link.linkcheck`: measure a shaped link, print a line per kind."""
    parser = argparse.ArgumentParser(
        prog="realrun.link.linkcheck", description=__doc__.splitlines()[0]
    )
    modes = ("both", "auto", "tbf", "software", "none")
    parser.add_argument("--mode", default="both", choices=modes, help="both: auto, then software")
    parser.add_argument("--uplink-mbps", type=float, default=10.0)
    parser.add_argument("--downlink-mbps", type=float, default=50.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--scenario", help="take the link of this scenario's first point instead")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each transfer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--json", action="store_true", help="print JSON, link details included")
    args = parser.parse_args(argv)
    try:
        spec = _spec_from_args(args)
        if not (args.seconds > 0 and args.repeats >= 1):
            raise ConfigError("--seconds/--repeats", "", "must be > 0 and >= 1")
        results: list[dict[str, Any]] = []
        for mode in ["auto", "software"] if args.mode == "both" else [args.mode]:
            if mode == "software" and any(r["kind"] == "software" for r in results):
                continue  # auto already fell back to software
            results.append(measure_spec(spec, mode, args.port, args.seconds, args.repeats))
    except ConfigError as exc:
        parser.exit(2, f"realrun.link.linkcheck: error: {exc}\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(_row(result))
            if "fallback_reason" in result["link"]:
                print(f"{'':>10}  fallback: {result['link']['fallback_reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
