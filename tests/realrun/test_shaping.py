"""Link shaping for the testbed (realrun/link/shaping.py, netns.py, relay.py, softlink.py).

Software shaper and relay timings run against local servers on loopback; the tbf-netns tests
need root, `ip` and `tc` (skipped elsewhere) and check the achieved rate and round trip with
the probe server of realrun.link.linkcheck running inside the namespace, trace replay through tc,
and that no namespace outlives its link.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")

from realrun.link import netns  # noqa: E402
from realrun.link.linkcheck import measure_spec  # noqa: E402
from realrun.link.probeapp import probe_app  # noqa: E402
from realrun.link.relay import DelayRelay  # noqa: E402
from realrun.link.shaping import LinkSpec, open_link  # noqa: E402
from simulator.errors import ConfigError  # noqa: E402
from simulator.link import ConstantBandwidth, TraceBandwidth  # noqa: E402
from simulator.scenario import expand_sweep  # noqa: E402

SLACK_S = 0.08
"""Time the real stack may add on a loaded 2-core machine (shaped times are lower bounds)."""

needs_tbf = pytest.mark.skipif(
    netns.unavailable_reason() is not None,
    reason=f"tbf-netns needs root, ip and tc: {netns.unavailable_reason()}",
)


def constant(up: float, down: float, latency_s: float) -> LinkSpec:
    return LinkSpec(ConstantBandwidth(up), ConstantBandwidth(down), latency_s)


@pytest.fixture(scope="module")
def probe_url() -> Iterator[str]:
    """realrun.link.probeapp's probe app in a uvicorn thread on loopback."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(probe_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def timed(client: httpx.Client, method: str, content: bytes = b"", n: int = 0) -> float:
    start = time.perf_counter()
    response = client.request(method, "/probe", content=content, params={"n": n})
    assert response.status_code == 200 and len(response.content) == n
    assert response.headers["x-received"] == str(len(content))
    return time.perf_counter() - start


def test_bad_mode_and_port_are_config_errors():
    spec = constant(10, 10, 0.0)
    with pytest.raises(ConfigError, match=r"mode: unknown value 'fast' \(allowed: auto, tbf"):
        open_link(spec, "fast")
    with pytest.raises(ConfigError, match="server_port"):
        open_link(spec, "none", server_port=0)


def test_spec_from_point_takes_profile_overrides_and_traces(write_scenario, tmp_path):
    (tmp_path / "down.csv").write_text("t_s,mbps\n0,100\n2,50\n")
    path = write_scenario(
        link={"uplink_mbps": 12.5, "one_way_latency_s": 0.03, "downlink_trace": "down.csv"}
    )
    spec = LinkSpec.from_point(expand_sweep(path)[0])
    profile = json.loads((tmp_path / "profile.json").read_text())["link"]
    assert isinstance(spec.uplink, ConstantBandwidth) and spec.uplink.mbps == 12.5
    assert isinstance(spec.downlink, TraceBandwidth)
    assert spec.downlink.mbps == [100, 50] and spec.downlink.repeat
    assert spec.one_way_latency_s == 0.03
    assert spec.uplink_overhead_s == profile["uplink_overhead_s"]
    assert spec.downlink_overhead_s == profile["downlink_overhead_s"]
    described = spec.describe()
    assert described["downlink"]["trace"] == str(tmp_path / "down.csv")
    assert described["uplink"] == {"mbps": 12.5}


def test_software_shaper_serialises_bodies_at_the_link_rate(probe_url):
    link = open_link(constant(8, 16, 0.02), "software")
    assert link.kind == "software" and link.transport() is not None
    with link, httpx.Client(base_url=probe_url, transport=link.transport()) as client:
        timed(client, "GET")
        link.start_clock()
        rtt = timed(client, "GET")
        up = timed(client, "POST", content=bytes(200_000))  # 200 kB at 8 Mbit/s: 0.2 s
        down = timed(client, "GET", n=200_000)  # at 16 Mbit/s: 0.1 s
    assert 0.04 <= rtt < 0.04 + SLACK_S
    assert 0.24 <= up < 0.24 + SLACK_S
    assert 0.14 <= down < 0.14 + SLACK_S


def test_software_shaper_follows_a_trace(probe_url):
    trace = TraceBandwidth([0.0, 0.1], [4.0, 40.0], repeat=False, source="test")
    link = open_link(LinkSpec(trace, ConstantBandwidth(1000), 0.0), "software")
    with link, httpx.Client(base_url=probe_url, transport=link.transport()) as client:
        timed(client, "GET")
        link.start_clock()
        # 100 kB: 50 kB in the first 0.1 s at 4 Mbit/s, the rest in 0.01 s at 40 (0.2 s at 4)
        first = timed(client, "POST", content=bytes(100_000))
        second = timed(client, "POST", content=bytes(100_000))  # all at 40 Mbit/s: 0.02 s
    assert 0.11 <= first < 0.11 + SLACK_S
    assert 0.02 <= second < 0.02 + SLACK_S


def test_software_shaper_queues_concurrent_messages(probe_url):
    link = open_link(constant(8, 1000, 0.0), "software")
    start: list[float] = []
    barrier = threading.Barrier(2, action=lambda: start.append(time.perf_counter()))
    done: list[float] = []

    def send() -> None:
        with httpx.Client(base_url=probe_url, transport=link.transport()) as client:
            timed(client, "GET")
            barrier.wait()
            timed(client, "POST", content=bytes(100_000))
            done.append(time.perf_counter() - start[0])

    with link:
        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # 100 kB at 8 Mbit/s is 0.1 s; the second message waits for the first
    assert 0.1 <= min(done) < 0.1 + SLACK_S
    assert 0.2 <= max(done) < 0.2 + SLACK_S


def echo_server() -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_relay_adds_latency_each_way_without_limiting_bandwidth():
    listener, thread = echo_server()
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    relay = DelayRelay("127.0.0.1", listener.getsockname()[1], 0.05)
    with relay, socket.create_connection(("127.0.0.1", relay.port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        conn.sendall(b"ping")
        assert conn.recv(16) == b"ping"
        rtt = time.perf_counter() - start

        sender = threading.Thread(target=conn.sendall, args=(payload,))
        start = time.perf_counter()
        sender.start()
        while len(received) < len(payload):
            chunk = conn.recv(1 << 20)
            assert chunk
            received.extend(chunk)
        bulk = time.perf_counter() - start
        sender.join()
    listener.close()
    thread.join(timeout=5)
    assert 0.1 <= rtt < 0.1 + SLACK_S
    assert bytes(received) == payload  # every byte, in order
    # 8 MiB each way in well under 2 s: the delay does not cap the rate
    assert 0.1 <= bulk < 2.0


def test_rate_changes_loop_like_the_trace():
    trace = TraceBandwidth([0.0, 1.0], [5.0, 10.0], repeat=True, source="test")
    changes = netns.rate_changes(trace, "uplink")
    first = [next(changes) for _ in range(3)]
    assert first == [(1.0, "uplink", 10.0), (2.0, "uplink", 5.0), (3.0, "uplink", 10.0)]
    assert next(changes) == (4.0, "uplink", 5.0)
    assert trace.at(2.5) == 5.0 and trace.at(3.5) == 10.0  # the simulator agrees
    once = TraceBandwidth([0.0, 1.0], [5.0, 10.0], repeat=False, source="test")
    assert list(netns.rate_changes(once, "downlink")) == [(1.0, "downlink", 10.0)]
    assert list(netns.rate_changes(ConstantBandwidth(5.0), "uplink")) == []


def test_auto_falls_back_to_software_and_says_why(monkeypatch):
    monkeypatch.setattr("realrun.link.shaping.unavailable_reason", lambda: "no 'tc' command")
    with open_link(constant(10, 10, 0.01), "auto") as link:
        assert link.kind == "software"
        assert link.server_command_prefix == [] and link.server_host == "127.0.0.1"
        assert link.describe()["fallback_reason"] == "no 'tc' command"
    with pytest.raises(ConfigError, match="'tbf' is not available here: no 'tc' command"):
        open_link(constant(10, 10, 0.01), "tbf")


def test_none_is_plain_loopback():
    with open_link(constant(10, 10, 0.01), "none", server_port=8123) as link:
        assert link.kind == "none" and link.transport() is None
        assert link.client_url(8123) == "http://127.0.0.1:8123"


def link_exists(device: str) -> bool:
    return subprocess.run(["ip", "link", "show", device], capture_output=True).returncode == 0


@needs_tbf
def test_tbf_netns_rate_and_latency_end_to_end():
    result = measure_spec(constant(10, 20, 0.02), "auto", seconds=0.4, repeats=2)
    info = result["link"]
    assert result["kind"] == "tbf-netns" and "fallback_reason" not in info
    assert abs(result["uplink_mbps"] - 10) < 1.0, result
    assert abs(result["downlink_mbps"] - 20) < 2.0, result
    assert 40 <= result["rtt_ms"] < 40 + SLACK_S * 1e3, result
    assert info["tbf"]["uplink_tbf"]["mbps"] == 10 and info["relay"]["delay_s"] == 0.02
    assert info["tbf"]["namespace"] not in netns.namespaces()
    assert not link_exists(info["tbf"]["edge_device"])


@needs_tbf
def test_tbf_trace_replay_changes_the_qdisc():
    trace = TraceBandwidth([0.0, 0.3], [5.0, 50.0], repeat=False, source="test")
    with open_link(LinkSpec(trace, ConstantBandwidth(20), 0.0), "tbf") as link:
        assert link.server_command_prefix == ["ip", "netns", "exec", link.namespace.name]
        assert link.client_url(1234) == f"http://{link.server_host}:1234"  # no relay
        device = link.namespace.edge_dev
        shown = subprocess.run(["tc", "qdisc", "show", "dev", device], capture_output=True)
        assert "rate 5227Kbit" in shown.stdout.decode()
        link.start_clock()
        time.sleep(0.6)
        shown = subprocess.run(["tc", "qdisc", "show", "dev", device], capture_output=True)
        assert "rate 52279Kbit" in shown.stdout.decode()
        replay = link.describe()["trace_replay"]
        assert replay["changes"] == 1 and replay["errors"] == [] and replay["max_lag_s"] < 0.2


@needs_tbf
def test_tbf_teardown_on_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt), open_link(constant(10, 10, 0.01), "tbf") as link:
        name, device = link.namespace.name, link.namespace.edge_dev
        assert name in netns.namespaces() and link_exists(device)
        raise KeyboardInterrupt
    assert name not in netns.namespaces() and not link_exists(device)


@needs_tbf
def test_cleanup_removes_only_namespaces_of_dead_processes():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = f"pipesd-{dead.pid}-test", f"pipesd-{os.getpid()}-test"
    for name in (stale, live):
        netns.run("ip", "netns", "add", name)
    try:
        removed = netns.cleanup_stale_namespaces()
        assert stale in removed and live not in removed
        assert stale not in netns.namespaces() and live in netns.namespaces()
    finally:
        for name in (stale, live):
            if name in netns.namespaces():
                netns.run("ip", "netns", "delete", name)
