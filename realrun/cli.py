"""`pipesd realrun ...`: the testbed's command line, light enough to build with the parser
(FastAPI, uvicorn and llama.cpp load only when a subcommand runs; they come with the
`realrun` extra)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
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
    edge = roles.add_parser(
        "edge",
        help="run a scenario's edge-drafting policies against a cloud server",
        description=(
            "Run every edge-drafting policy of SCENARIO (first sweep point) on this machine: "
            "the draft with llama.cpp, verification by the server at --server. Writes "
            "OUT/summary.csv, results.csv, manifest.json and timelines/ in the simulator's "
            "schema. The link is not shaped yet."
        ),
    )
    edge.add_argument("scenario", type=Path, help="scenario TOML file")
    edge.add_argument("--server", required=True, help="cloud server URL")
    edge.add_argument("--draft", required=True, help="draft GGUF sharing the target tokenizer")
    edge.add_argument("--threads", type=int, default=1, help="draft CPU threads")
    edge.add_argument("--token", help="the server's shared secret, if it has one")
    edge.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    edge.add_argument("--out", type=Path, required=True, help="output folder")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd realrun <role>`."""
    try:
        from realrun.server import serve
        from realrun.testbed import run_testbed
    except ImportError as exc:
        raise ConfigError(
            "realrun", args.role, f"{exc.name} is not installed (pip install -e '.[realrun]')"
        ) from None
    if args.role == "cloud":
        return serve(args)
    import httpx

    from calibrate.models import resolve_model
    from simulator.scenario import expand_sweep

    point = expand_sweep(args.scenario, args.overrides)[0]
    draft = resolve_model(args.draft)
    try:
        rows = run_testbed(
            args.scenario,
            point,
            args.server,
            draft,
            args.threads,
            args.out,
            ["pipesd", *argv],
            args.token,
        )
    except httpx.HTTPError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--server", args.server, f"cannot reach the cloud ({reason})") from None
    for row in rows:
        print(
            f"{row['policy']:24s} TPT {row['tpt_ms']:8.1f} ms  accept {row['acceptance_rate']:.2f}"
        )
    print(f"wrote {args.out}/summary.csv, results.csv, manifest.json")
    return 0
