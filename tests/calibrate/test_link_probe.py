"""`pipesd calibrate link` against the kit's own server on loopback (no model work needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="fastapi (extra 'realrun') is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (extra 'realrun') is not installed")

from model_marks import needs_smollm2

from pipesd.cli import main
from realrun.cloud.llama_target import Session, VerifyResult
from realrun.cloud.server import create_app

FAKE_TARGET = SimpleNamespace(
    n_batch=512, n_vocab=100, n_ctx=128, sessions={}, model_name="fake.gguf",
    supports_rules=False, max_verify_batch=1,
)  # fmt: skip
"""Probes and health never touch the model: a stand-in with its sizes is enough."""


@pytest.fixture
def server_url() -> Iterator[str]:
    import uvicorn

    app = create_app("unused", target=FAKE_TARGET, rate_limit_per_s=None, token="secret")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


def test_link_part_from_loopback(server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "link.json"
    argv = ["calibrate", "link", "--server", server_url, "--token", "secret",
            "--sizes", "1000,1000000,4000000", "--repetitions", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    part = json.loads(out.read_text())
    values = part["values"]
    assert values["link.uplink_mbps"] > 100  # loopback moves far more than 100 Mbit/s
    assert 0 < values["link.one_way_latency_s"] < 0.05
    assert values["link.uplink_overhead_s"] >= 0
    assert len(part["samples"]["transfer"]) == 12


def test_link_errors_are_one_line(server_url: str, tmp_path: Path, capsys) -> None:
    argv = ["calibrate", "link", "--server", server_url, "--token", "wrong",
            "--out", str(tmp_path / "x.json")]  # fmt: skip
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    argv = ["calibrate", "link", "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "y")]
    assert main(argv) == 2


class BusyTarget:
    """A stand-in target: each verification busy-waits BUSY_S, accepts every draft and
    answers token 1 (no model needed to time the verify path around it)."""

    BUSY_S = 0.2
    n_batch, n_vocab, n_ctx, model_name = 512, 5000, 2048, "busy.gguf"
    supports_rules, max_verify_batch = False, 8

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    def open(self, prompt: list[int]) -> tuple[str, float]:
        sid = f"s{len(self.sessions)}"
        self.sessions[sid] = Session(list(prompt[:-1]), prompt[-1], n_prompt=len(prompt))
        return sid, 0.0

    def upload(self, sid: str, tokens: list[int], probs: object, dists: object = None) -> int:
        self.sessions[sid].uploaded.extend(tokens)
        return len(self.sessions[sid].uploaded)

    def verify_batch(self, sids: list[str]) -> list[VerifyResult]:
        results = []
        for sid in sids:
            start = time.perf_counter()
            while time.perf_counter() - start < self.BUSY_S:
                pass
            s = self.sessions[sid]
            s.committed += [s.pending, *s.uploaded]
            s.pending, s.uploaded = 1, []
            results.append(VerifyResult(len(s.committed), 1, 1e3 * (time.perf_counter() - start)))
        return results

    def drop(self, sid: str) -> None:
        del self.sessions[sid]


def test_nav_overhead_excludes_the_target_time() -> None:
    import uvicorn

    from calibrate.link import nav_overhead

    target = BusyTarget()
    app = create_app("unused", target=target, rate_limit_per_s=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        navs = nav_overhead(url, latency_s=0.0, token_counts=(1, 4), repetitions=3)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert [n for n, _ in navs.samples] == [1, 4] * 3
    # the target's 200 ms are out (what is left: HTTP, here ~45 ms with client and uvicorn in
    # one process, ~2 ms between processes)
    assert 0.0 <= navs.overhead_s < BusyTarget.BUSY_S / 2
    assert target.sessions == {}  # the session was closed


@needs_smollm2
def test_link_through_the_testbeds_software_shaper(write_scenario, tmp_path: Path) -> None:
    """`--testbed SCENARIO --testbed-shaping software` (no root, as on the GPU machine): a
    server behind the scenario's software-shaped link; the latency is the scenario's, the rate
    the shaper's, and the NAVs' overhead is measured."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'models') is not installed")
    scenario = write_scenario(link={"one_way_latency_s": 0.01})
    out = tmp_path / "link.json"
    argv = ["calibrate", "link", "--testbed", str(scenario), "--testbed-shaping", "software",
            "--testbed-mbps", "20", "--sizes", "1024,65536,262144", "--repetitions", "3",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    part = json.loads(out.read_text())
    values = part["values"]
    assert values["link.one_way_latency_s"] == pytest.approx(0.01)
    assert 15 < values["link.uplink_mbps"] < 25  # the shaper's 20 Mbit/s, give or take
    assert values["link.uplink_overhead_s"] > 0
    assert "software shaping" in part["notes"]["link"]
