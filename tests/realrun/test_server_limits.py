"""The cloud server against hostile clients (issue 17): expiry, per-client limits, parking,
header and body deadlines, the global byte bound, one-line logs; and the synthetic target.

All on realrun.cloud.synthetic_target.SyntheticTarget (no model), most through uvicorn on
loopback with realrun.cloud.connections' protocol, so each test takes well under a second or
two. Clients are told apart by address: Linux routes all of 127.0.0.0/8 to loopback, so a
client bound to 127.0.0.2 is another client to the server.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (extra 'realrun')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (extra 'realrun')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (extra 'realrun')")
msgpack = pytest.importorskip("msgpack", reason="msgpack is not installed (extra 'realrun')")

from fastapi.testclient import TestClient  # noqa: E402

from realrun.cloud.backend import TargetBackend  # noqa: E402
from realrun.cloud.connections import uvicorn_config  # noqa: E402
from realrun.cloud.server import create_app  # noqa: E402
from realrun.cloud.synthetic_target import SyntheticTarget  # noqa: E402
from realrun.edge.client import CloudClient, CloudError  # noqa: E402
from realrun.protocol import CONTENT_TYPE, encode  # noqa: E402
from simulator.profile import load_profile  # noqa: E402

HEADERS = {"Content-Type": CONTENT_TYPE}
PROFILE = Path(__file__).resolve().parents[2] / "scenarios" / "profiles" / "default.json"
PROMPT = [1, 2, 3, 4]


def post(c, name: str, obj: dict) -> tuple[int, dict]:
    r = c.post(f"/v1/{name}", content=encode(obj), headers=HEADERS)
    return r.status_code, msgpack.unpackb(r.content, raw=False) if r.content else {}


@contextmanager
def served(app) -> Iterator[str]:
    """`app` under uvicorn (the server's own configuration) on a free loopback port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def client_at(url: str, address: str = "127.0.0.1") -> httpx.Client:
    """An httpx client whose connections come from `address` (another client to the server)."""
    transport = httpx.HTTPTransport(local_address=address, limits=httpx.Limits(max_connections=100))
    return httpx.Client(base_url=url, transport=transport, headers=HEADERS, timeout=30)


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


# ------------------------------------------------------------------------ the backend protocol


@pytest.mark.parametrize(
    "module, name",
    [
        ("realrun.cloud.llama_target", "LlamaTarget"),
        ("realrun.cloud.torch_target", "TorchTarget"),
        ("realrun.cloud.synthetic_target", "SyntheticTarget"),
    ],
)
def test_targets_have_the_backend_protocols_methods(module, name):
    """Every backend has each method of TargetBackend with its parameters (instances of the
    llama and torch targets are checked with isinstance in test_server, test_torch_target)."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    for method in ("open", "upload", "verify_batch", "drop", "close"):
        wanted = list(inspect.signature(getattr(TargetBackend, method)).parameters)
        assert list(inspect.signature(getattr(cls, method)).parameters) == wanted, method
    assert cls.supports_rules is True and cls.max_verify_batch >= 1
    assert isinstance(SyntheticTarget(), TargetBackend)


# ------------------------------------------------------------------------ sessions


def test_idle_sessions_expire_and_never_lock_clients_out():
    app = create_app("", target=SyntheticTarget(n_vocab=100), session_idle_timeout_s=0.3,
                     max_sessions=2, max_sessions_per_client=2, rate_limit_per_s=None)  # fmt: skip
    with TestClient(app) as c:
        abandoned = [post(c, "open", {"prompt": PROMPT})[1]["session"] for _ in range(2)]
        status, body = post(c, "open", {"prompt": PROMPT})
        assert status == 429 and "session limit" in body["error"]
        time.sleep(0.45)
        status, body = post(c, "open", {"prompt": PROMPT})
        assert status == 200
        kept = body["session"]
        for _ in range(6):  # used every 0.1 s for twice the timeout: never expires
            time.sleep(0.1)
            assert post(c, "verify", {"session": kept, "n": 0})[0] == 200
        for sid in abandoned:
            status, body = post(c, "verify", {"session": sid, "n": 0})
            assert status == 404 and "expired" in body["error"]
        health = msgpack.unpackb(c.get("/v1/health").content)
        assert health["expired_sessions"] == 2 and health["sessions"] == 1
        assert health["settings"]["session_idle_timeout_s"] == 0.3


def test_per_client_session_and_inflight_limits():
    app = create_app("", target=SyntheticTarget(n_vocab=100), max_sessions=8,
                     max_sessions_per_client=2, max_inflight_per_client=2, order_timeout_s=0.5,
                     rate_limit_per_s=None)  # fmt: skip
    with served(app) as url, client_at(url) as one, client_at(url, "127.0.0.2") as two:
        for _ in range(2):
            assert post(one, "open", {"prompt": PROMPT})[0] == 200
        status, body = post(one, "open", {"prompt": PROMPT})
        assert status == 429 and "holds 2 sessions" in body["error"]
        status, body = post(two, "open", {"prompt": PROMPT})  # another client: room
        assert status == 200
        sid = body["session"]
        parked: list[int] = []

        def early(seq: int) -> None:  # waits for seq 0, which does not come in time
            parked.append(post(two, "upload", {"session": sid, "tokens": [5], "seq": seq})[0])

        threads = [threading.Thread(target=early, args=(seq,)) for seq in (1, 2)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        status, body = post(two, "verify", {"session": sid, "n": 0, "seq": 0})
        assert status == 429 and "in flight" in body["error"]  # two are in flight already
        for t in threads:
            t.join(timeout=10)
        assert parked == [409, 409]  # their turn never came
        assert post(two, "verify", {"session": sid, "n": 0, "seq": 0})[0] == 200


def test_out_of_order_uploads_are_bounded_and_hold_no_thread():
    """80 uploads with future `seq` (issue 17's attack): 8 park in the event loop, the rest
    are refused at once, and another client's requests are answered at once meanwhile."""
    app = create_app("", target=SyntheticTarget(n_vocab=100), max_parked_per_session=8,
                     max_inflight_per_client=200, max_connections_per_client=200,
                     order_timeout_s=20.0, rate_limit_per_s=None)  # fmt: skip
    codes: list[int] = []
    with served(app) as url, client_at(url, "127.0.0.3") as hostile, client_at(url) as edge:
        sid = post(hostile, "open", {"prompt": PROMPT})[1]["session"]
        body = encode({"session": sid, "tokens": [5], "seq": 40})

        def attack() -> None:
            codes.append(hostile.post("/v1/upload", content=body).status_code)

        threads = [threading.Thread(target=attack) for _ in range(80)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(codes) < 72 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(codes) == [429] * 72  # refused at once; 8 parked
        start = time.perf_counter()
        mine = post(edge, "open", {"prompt": PROMPT})[1]["session"]
        for seq in range(5):
            assert post(edge, "verify", {"session": mine, "n": 0, "seq": seq})[0] == 200
        # blocked worker threads would hold these until the parked ones timed out (20 s)
        assert time.perf_counter() - start < 5.0
        assert app.state.cloud.sequencer.parked(sid) == 8
        assert post(hostile, "close", {"session": sid})[0] == 200  # the parked ones: 404
        for t in threads:
            t.join(timeout=10)
        assert codes.count(404) == 8


# ------------------------------------------------------------------------ connections, bodies


def test_half_sent_headers_are_cut_off(caplog):
    app = create_app("", target=SyntheticTarget(n_vocab=100), header_timeout_s=0.3)
    caplog.set_level(logging.INFO, logger="realrun.cloud")
    with served(app) as url:
        sockets = [raw(url) for _ in range(20)]
        for s in sockets:
            s.sendall(b"POST /v1/open HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.perf_counter()
        for s in sockets:
            assert s.recv(100) == b""  # closed by the server
            s.close()
        assert time.perf_counter() - start < 2.0
        with client_at(url) as c:  # a well-behaved client is unaffected
            assert post(c, "open", {"prompt": PROMPT})[0] == 200
    lines = [r for r in caplog.records if "no complete request headers" in r.getMessage()]
    assert lines and all(r.levelno == logging.INFO and not r.exc_info for r in lines)
    assert len(lines) < 20  # throttled: one line a second, the rest counted


def test_slow_body_gets_408_and_dropped_client_is_one_info_line(caplog):
    app = create_app("", target=SyntheticTarget(n_vocab=100), body_timeout_s=0.3)
    caplog.set_level(logging.INFO)
    with served(app) as url:
        slow = raw(url)
        slow.sendall(b"POST /v1/open HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack"
                     b"\r\nContent-Length: 100\r\n\r\n" + b"\x00" * 10)  # fmt: skip
        answer = slow.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408")
        slow.close()
        dropped = raw(url)
        dropped.sendall(b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                        b"msgpack\r\nContent-Length: 1000\r\n\r\n" + b"\x00" * 10)  # fmt: skip
        time.sleep(0.05)
        dropped.close()
        time.sleep(0.2)
    mine = [r for r in caplog.records if "dropped /v1/upload" in r.getMessage()]
    assert len(mine) == 1 and mine[0].levelno == logging.INFO and not mine[0].exc_info
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_buffered_bytes_are_bounded_globally():
    """Two large bodies in flight would pass the budget's large-body half: the second gets 503
    with Retry-After; small protocol requests still find room."""
    app = create_app("", target=SyntheticTarget(n_vocab=100), max_buffered_bytes=1 << 20,
                     max_probe_bytes=400_000, rate_limit_per_s=None)  # fmt: skip
    with served(app) as url, client_at(url, "127.0.0.4") as c:
        holder = raw(url)
        holder.sendall(b"POST /v1/probe HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                       b"msgpack\r\nContent-Length: 400000\r\n\r\n" + b"\x00" * 1000)  # fmt: skip
        time.sleep(0.1)
        r = c.post("/v1/probe", content=encode({"pad": b"\x00" * 399_000}))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert post(c, "open", {"prompt": PROMPT})[0] == 200
        holder.close()
        time.sleep(0.1)
        r = c.post("/v1/probe", content=encode({"pad": b"\x00" * 399_000}))
        assert r.status_code == 200
        assert app.state.cloud.budget.used == 0


# ------------------------------------------------------------------------ the synthetic target


def test_synthetic_target_end_to_end_through_the_protocol():
    """Greedy speculative decoding against the synthetic target through uvicorn and the edge's
    CloudClient reproduces its seeded greedy chain; synthetic and sampling sessions work; each
    verification takes the profile's modelled time."""
    latency = load_profile(PROFILE).profile.target_latency
    target = SyntheticTarget(n_vocab=500, latency=latency, seed=3)
    chain = [PROMPT[-1]]
    for i in range(20):
        chain.append(target.next_token(chain[-1], len(PROMPT) - 1 + i))
    reference = chain[1:]
    app = create_app("", target=target, rate_limit_per_s=None)
    with served(app) as url, CloudClient(url) as cloud:
        assert cloud.health()["model"] == "synthetic"
        sid = cloud.open(PROMPT)["session"]
        generated: list[int] = []
        while len(generated) < 16:
            drafts = reference[len(generated) : len(generated) + 3]
            drafts = [*drafts[:2], (drafts[2] + 1) % 500] if len(drafts) == 3 else drafts
            answer = cloud.verify(sid, len(drafts), drafts)
            assert answer["target_ms"] >= 1e3 * latency.forward_s(len(drafts) + 1, 0) * 0.99
            generated += [*drafts[: answer["accepted"]], answer["token"]]
        assert generated[:16] == reference[:16]
        cloud.close(sid)
        verdicts = cloud.open(PROMPT, synthetic_accepted=[1, 0])["session"]
        assert cloud.verify(verdicts, 2, [7, 8])["accepted"] == 1
        sampled = cloud.open(PROMPT, sampling=(0.7, 1))["session"]
        answer = cloud.verify(sampled, 1, [7], dists=[([7, 9], [0.5, 0.5])])
        assert answer["accepted"] in (0, 1) and 0 <= answer["token"] < 500
        with pytest.raises(CloudError) as err:
            cloud.verify(sid, 0)
        assert err.value.status == 404


def test_synthetic_target_needs_a_profile(capsys):
    from realrun.cloud.server import main

    with pytest.raises(SystemExit) as exc:
        main(["--synthetic-target"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--profile" in err and len(err.splitlines()) == 1


def test_limits_are_cli_options_with_one_line_errors(capsys):
    import argparse

    from realrun.cli import add_arguments
    from realrun.cloud.server import main, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--session-idle-timeout-s", "5", "--rate-limit", "0",
                              "--max-parked-per-session", "3"])  # fmt: skip
    settings = settings_from_args(args)
    assert settings.session_idle_timeout_s == 5.0 and settings.rate_limit_per_s is None
    assert settings.max_parked_per_session == 3 and settings.max_sessions == 64
    for flag in ("--header-timeout-s", "--max-sessions-per-client"):
        argv = [flag, "0"]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and len(err.splitlines()) == 1
