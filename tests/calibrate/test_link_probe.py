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

from pipesd.cli import main
from realrun.server import create_app

FAKE_TARGET = SimpleNamespace(
    n_batch=512, n_vocab=100, n_ctx=128, sessions={}, model_path=Path("fake.gguf")
)
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
