"""`pipesd realrun ...`: the testbed's command line, light enough to build with the parser
(FastAPI, uvicorn and llama.cpp load only when a subcommand runs; they come with the
`realrun` extra)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from simulator.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's command-line options (shared by `pipesd realrun cloud` and `main`)."""
    parser.add_argument("--model", default="smollm2-135m", help="GGUF path or known name")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback default)")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--token", default=None, help="shared secret for X-PipeSD-Token")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--rate-limit", type=float, default=200.0, help="requests/s/client")


def add_parser(subparsers: Any) -> None:
    """Register `pipesd realrun` and its subcommands."""
    realrun = subparsers.add_parser("realrun", help="the real testbed (cloud server so far)")
    roles = realrun.add_subparsers(dest="role", required=True)
    cloud = roles.add_parser(
        "cloud", help="serve a target model for verification over HTTP (msgpack bodies)"
    )
    add_arguments(cloud)


def run(args: argparse.Namespace) -> int:
    """Execute `pipesd realrun <role>`."""
    try:
        from realrun.server import serve
    except ImportError as exc:
        raise ConfigError(
            "realrun", args.role, f"{exc.name} is not installed (pip install -e '.[realrun]')"
        ) from None
    return serve(args)
