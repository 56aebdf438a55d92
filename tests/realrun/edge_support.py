"""Shared pieces of the edge executor's tests (tests/realrun/test_edge*.py): the real models,
one layer-truncated draft file per test session, and the verification server, in a uvicorn
thread or in a subprocess that a test can kill and restart."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from model_marks import smollm2_path

from models.truncate import truncate_gguf

THREADS = 1  # one thread: llama.cpp spin-waits badly on a loaded 2-core CI machine
KEEP_LAYERS = 28
SERVER_START_S = 120.0


def model_or_skip() -> Path:
    """SmolLM2-135M's GGUF file, or skip the test."""
    return smollm2_path()


def shared_draft(
    model_path: Path, factory: pytest.TempPathFactory, keep_layers: int = KEEP_LAYERS
) -> Path:
    """SmolLM2 truncated to `keep_layers` layers, written once per test session (it is slow)."""
    path = factory.getbasetemp() / "edge-draft" / f"smollm2-{keep_layers}.gguf"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".part")
        truncate_gguf(model_path, partial, keep_layers)
        partial.rename(path)
    return path


def open_draft(path: Path) -> Any:
    """The draft as the testbed loads it (flash attention, greedy, one thread)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=512,
        logits_all=False,
        flash_attn=True,
        verbose=False,
        seed=0,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def thread_server(model_path: Path, **settings: Any) -> Iterator[str]:
    """The verification server in a uvicorn thread on loopback (`settings`: ServerSettings
    fields by name); yields its URL."""
    import uvicorn

    from realrun.cloud.llama_target import LlamaTarget
    from realrun.cloud.server import create_app

    target = LlamaTarget(model_path, threads=THREADS, n_ctx=512)
    app = create_app(model_path, target=target, **({"rate_limit_per_s": None} | settings))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # accepted connections inherit it (Linux); without it every answer here waited ~40 ms for
    # the client's delayed ACK (Nagle); the subprocess server showed no such delay
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        target.close()


class ServerProcess:
    """`python -m realrun.cloud.server` on a fixed loopback port, startable again after a kill."""

    def __init__(self, model_path: Path, port: int) -> None:
        self.model_path, self.port = model_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server (unless it runs) and wait until it answers /v1/health."""
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = [sys.executable, "-m", "realrun.cloud.server", "--model", str(self.model_path),
                "--threads", str(THREADS), "--port", str(self.port), "--n-ctx", "512",
                "--rate-limit", "0"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                log = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {self.proc.returncode}: {log[-800:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL: the cloud vanishes mid-whatever, as a crash or a pulled cable would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
