"""`pipesd realrun ...`: the testbed's command line, light enough to build with the parser
(FastAPI, uvicorn and llama.cpp load only when a subcommand runs; they come with the
`realrun` extra)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from models.registry import MODEL_NAMES, resolve_model
from models.shapes import SHAPES, get_shape
from realrun.cloud.settings import ServerSettings
from realrun.fleet import check_fleet, fleet_skip_reason, run_fleet
from realrun.local import (
    ACCEPTANCE_MODES,
    LOCAL_KIND,
    SHAPING_MODES,
    LocalOptions,
    ServerError,
    check_points,
    run_local,
)
from realrun.testbed import run_testbed
from realrun.testbed_rules import (
    SamplingSpec,
    check_recorded_conditions,
    check_sampling,
    entry_skip_reason,
)
from simulator.errors import ConfigError
from simulator.outdir import claim_out_dir, out_dir_arg
from simulator.scenario import expand_sweep

if TYPE_CHECKING:
    from simulator.scenario import SweepPoint

EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's command-line options (shared by `pipesd realrun cloud` and `main`)."""
    d = ServerSettings()
    parser.add_argument("--model", default="smollm2-135m", help="GGUF path or known name")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback default)")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--token", default=None, help="shared secret for X-PipeSD-Token")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--backend", choices=("llama", "torch"), default="llama")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms)
    parser.add_argument("--max-batch", type=int, default=d.max_batch, help="verifies per batch")
    parser.add_argument("--kv-slots", type=int, default=8, help="llama: sessions kept in KV")
    synthetic = parser.add_argument_group("synthetic target (load tests and demos, no model)")
    synthetic.add_argument(
        "--synthetic-target",
        action="store_true",
        help="serve seeded logits instead of a model: the real protocol and verification "
        "rules, timed by --profile's target latency model",
    )
    synthetic.add_argument("--profile", type=Path, default=None, help="profile JSON (timing)")
    synthetic.add_argument("--synthetic-vocab", type=int, default=49152, help="vocabulary size")
    synthetic.add_argument("--seed", type=int, default=0, help="which synthetic model")
    limits = parser.add_argument_group("limits and timeouts (docs/reliability.md)")

    def limit(flag: str, kind: type, default: float | int | None, text: str) -> None:
        limits.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")

    limit("--max-sessions", int, d.max_sessions, "open sessions, all clients")
    limit("--max-sessions-per-client", int, d.max_sessions_per_client, "sessions per address")
    limit(
        "--session-idle-timeout-s",
        float,
        d.session_idle_timeout_s,
        "a session untouched for this long is closed by the server",
    )
    limit("--rate-limit", float, d.rate_limit_per_s, "requests/s per address (0: unlimited)")
    limit("--max-inflight-per-client", int, d.max_inflight_per_client, "requests at once")
    limit("--order-timeout-s", float, d.order_timeout_s, "a numbered request's wait for its turn")
    limit(
        "--max-parked-per-session",
        int,
        d.max_parked_per_session,
        "numbered requests of one session waiting for their turn",
    )
    limit("--max-connections-per-client", int, d.max_connections_per_client, "TCP connections")
    limit("--header-timeout-s", float, d.header_timeout_s, "to receive a request's headers")
    limit("--body-timeout-s", float, d.body_timeout_s, "to receive a request's body")
    limit("--keep-alive-s", float, d.keep_alive_s, "an idle keep-alive connection is closed")
    limit("--max-body-bytes", int, d.max_body_bytes, "bytes of one request body (413 past it)")
    limit(
        "--max-buffered-bytes",
        int,
        d.max_buffered_bytes,
        "request body bytes held at once, all requests (503 past it)",
    )


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    """--force: replace this command's own earlier results in --out (simulator.outdir)."""
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace this command's earlier results in OUT (a folder of anything else is "
        "always refused)",
    )


def add_testbed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `pipesd realrun local` and `pipesd validate` (validation.cli)."""

    parser.add_argument("scenario", type=Path, help="scenario TOML file")
    parser.add_argument(
        "--target",
        required=True,
        help="target GGUF path or known name; --target-backend torch: also a Hugging Face "
        "folder or a named random-weight shape (models/shapes.py, with --acceptance synthetic)",
    )
    parser.add_argument("--draft", required=True, help="draft GGUF sharing the target tokenizer")
    parser.add_argument(
        "--target-backend",
        choices=("llama", "torch"),
        default="llama",
        help="the server's target: llama.cpp, or torch (static cache; CUDA graphs on a GPU)",
    )
    parser.add_argument("--target-device", default="cpu", help="the server's device: cpu, cuda[:N]")
    parser.add_argument("--target-threads", type=int, default=1, help="server CPU threads")
    parser.add_argument("--draft-threads", type=int, default=1, help="draft CPU threads")
    parser.add_argument(
        "--shaping",
        choices=SHAPING_MODES,
        default="auto",
        help="link shaping: tbf in network namespaces, the software shaper, none, or auto "
        "(tbf where possible, else software)",
    )
    parser.add_argument(
        "--acceptance",
        choices=ACCEPTANCE_MODES,
        default="real",
        help="real: the target's own verification; synthetic: the scenario's acceptance model",
    )
    add_sampling_arguments(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="K=V1,V2", help="add a sweep axis"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, no table (validate still prints its verdict)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--temperature and --top-k (`pipesd realrun edge`, `realrun local`, `validate`)."""
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="speculative sampling at temperature T in (0, 100]: the draft samples from its "
        "top-K, the server verifies by rejection sampling, each request seeded by the "
        "scenario's (seed, request); a policy whose payload sets downlink_top_k (PicoSpec) "
        "verifies at the edge on the target's top-K instead; default: greedy (every policy "
        "verified by the server). Not with --acceptance synthetic",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="with --temperature: the draft samples from its K most likely tokens and uploads "
        "them (default: the scenario's payload.top_k when payload.kind is 'topk', else the "
        "largest K whose distributions of a whole NAV fit the server's 64 KiB body limit)",
    )


def sampling_spec(args: argparse.Namespace) -> SamplingSpec | None:
    """The sampling flags (None: greedy); one-line ConfigError for --top-k without
    --temperature, values out of range, or --acceptance synthetic (the checks that depend on
    the scenario: `check_sampling_points`)."""
    from realrun.protocol import MAX_TEMPERATURE  # loads msgpack (optional) when imported

    if args.temperature is None:
        if args.top_k is not None:
            raise ConfigError(
                "--top-k", str(args.top_k), "needs --temperature (greedy drafting sends no "
                "distributions)"
            )  # fmt: skip
        return None
    if not 0 < args.temperature <= MAX_TEMPERATURE:
        raise ConfigError(
            "--temperature", str(args.temperature), f"must be in (0, {MAX_TEMPERATURE:g}]"
        )
    if getattr(args, "acceptance", "real") == "synthetic":
        raise ConfigError(
            "--temperature",
            str(args.temperature),
            "cannot be combined with --acceptance synthetic (sampling needs real acceptance)",
        )
    return SamplingSpec(args.temperature, args.top_k)


def check_sampling_points(
    sampling: SamplingSpec | None, points: list[SweepPoint], acceptance: str = "real"
) -> None:
    """Refuse sampling settings that some point cannot run, before anything starts."""

    for point in points:
        check_sampling(sampling, point.scenario, acceptance)


def add_parser(subparsers: Any) -> None:
    """Register `pipesd realrun` and its subcommands."""
    realrun = subparsers.add_parser(
        "realrun", help="the real testbed: cloud server, edge, local runs"
    )
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
            "the draft with llama.cpp (greedy, or sampling with --temperature), verification "
            "by the server at --server (with --temperature, at the edge on the target's top-K "
            "for policies whose payload sets downlink_top_k). Writes "
            "OUT/summary.csv, results.csv, manifest.json and timelines/ in the simulator's "
            "schema. The link is not shaped yet."
        ),
    )
    edge.add_argument("scenario", type=Path, help="scenario TOML file")
    edge.add_argument("--server", required=True, help="cloud server URL")
    edge.add_argument("--draft", required=True, help="draft GGUF sharing the target tokenizer")
    edge.add_argument("--threads", type=int, default=1, help="draft CPU threads")
    edge.add_argument("--token", help="the server's shared secret, if it has one")
    add_sampling_arguments(edge)
    edge.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    edge.add_argument("--out", type=out_dir_arg, required=True, help="output folder")
    add_force_argument(edge)
    local = roles.add_parser(
        "local",
        help="run a scenario's sweep points here: a cloud server per point behind a shaped link",
        description=(
            "For every sweep point of SCENARIO: shape the point's link, start the cloud server "
            "(--target) as a subprocess behind it, run the edge-drafting policies with the "
            "draft (--draft), then stop the server. Writes OUT/summary.csv, results.csv, "
            "manifest.json and timelines/ in the simulator's layout (sweep axes as columns), "
            "and each point's own files under OUT/points/, as each point finishes."
        ),
    )
    add_testbed_arguments(local)
    local.add_argument("--out", type=out_dir_arg, required=True, help="output folder")
    add_force_argument(local)


def local_options(args: argparse.Namespace) -> LocalOptions:
    """LocalOptions from the shared testbed flags (models resolved, threads checked)."""

    sampling = sampling_spec(args)  # flag errors first: they need no model
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.target_device):
        raise ConfigError("--target-device", args.target_device, "allowed: cpu, cuda, cuda:N")
    models: dict[str, Path | str] = {}
    for flag, value in (("--target", args.target), ("--draft", args.draft)):
        if flag == "--target" and args.target_backend == "torch":
            models[flag] = torch_target_arg(value)
            continue
        try:
            models[flag] = resolve_model(value)
        except ConfigError as exc:
            raise ConfigError(flag, "", exc.problem) from None
    for flag, value in (
        ("--target-threads", args.target_threads),
        ("--draft-threads", args.draft_threads),
    ):
        if value < 1:
            raise ConfigError(flag, "", f"must be at least 1 (got {value})")
    return LocalOptions(
        target=models["--target"],
        draft=Path(models["--draft"]),
        target_threads=args.target_threads,
        draft_threads=args.draft_threads,
        shaping=args.shaping,
        acceptance=args.acceptance,
        target_backend=args.target_backend,
        target_device=args.target_device,
        sampling=sampling,
    )


def torch_target_arg(value: str) -> Path | str:
    """A torch target as the server will load it: an existing file or folder (absolute path),
    a named shape, or a known GGUF name; ConfigError (one line) otherwise."""

    path = Path(value).expanduser()
    if path.exists():
        return path.resolve()
    try:
        get_shape(value)
        return value
    except ValueError:
        pass
    if value.lower() in MODEL_NAMES:
        return resolve_model(value)
    raise ConfigError(
        "--target",
        value,
        f"not a file, folder or known name; allowed with --target-backend torch: a Hugging Face "
        f"folder, a .gguf file, a shape ({', '.join(SHAPES)}) or {', '.join(sorted(MODEL_NAMES))}",
    )


def make_out(args: argparse.Namespace, kind: str, argv: list[str]) -> None:
    """Claim --out for command `kind` (simulator.outdir: a new or empty folder, or this
    command's own earlier one with --force; anything else is refused, nothing deleted)."""
    claim_out_dir(args.out, kind, force=args.force, command=["pipesd", *argv])


@contextlib.contextmanager
def testbed_progress(quiet: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr advanced once per finished request (silent with --quiet)."""

    bar = Progress(
        TextColumn("[bold]testbed"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[current]}"),
        console=Console(stderr=True),
        disable=quiet,
    )
    with bar:
        task = bar.add_task("testbed", total=total, current="")
        yield lambda message: bar.update(task, advance=1, current=message)


def testbed_requests(points: list[Any], sampling: SamplingSpec | None = None) -> int:
    """Progress steps the testbed runs over all points (for the progress bar): requests on
    one edge; on many edges (`[[edge_groups]]`) sessions, one per policy the fleet runs
    (DiP-SD included) and seed, as realrun.fleet advances the bar once per session."""

    scenario = points[0].scenario
    if scenario.model.edge_groups:
        runnable = sum(1 for e in scenario.policies if fleet_skip_reason(e.name) is None)
        return len(points) * runnable * len(scenario.model.seeds)
    runnable = sum(1 for e in scenario.policies if entry_skip_reason(e, sampling) is None)
    return len(points) * runnable * len(scenario.model.seeds) * scenario.model.prompts.count


def run_local_command(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd realrun local`."""

    points = expand_sweep(args.scenario, args.overrides, args.sweep)
    options = local_options(args)
    check_sampling_points(options.sampling, points, options.acceptance)
    many = bool(points[0].scenario.model.edge_groups)  # a process per edge (realrun.fleet)
    (check_fleet if many else check_points)(args.scenario, points, options)  # before OUT exists
    make_out(args, LOCAL_KIND, argv)
    runner = run_fleet if many else run_local
    total = testbed_requests(points, options.sampling)
    with testbed_progress(args.quiet, total) as progress:
        rows = runner(args.scenario, points, options, args.out, ["pipesd", *argv], progress)
    if not args.quiet:
        axes = list(points[0].axes)
        for row in rows:
            where = " ".join(f"{a}={row[a]}" for a in axes)
            print(
                f"{where + '  ' if where else ''}{row['policy']:24s} TPT {row['tpt_ms']:8.1f} ms"
                f"  accept {row['acceptance_rate']:.2f}"
            )
    print(f"wrote {args.out}/summary.csv, results.csv, manifest.json, timelines/, points/")
    return 0


def interrupted(out: Path) -> int:
    """Say what an interrupted testbed run kept; the exit code of an interruption."""
    print(
        f"pipesd: interrupted; the server is stopped and finished points are kept in {out} "
        "(manifest status 'interrupted')",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Execute `pipesd realrun <role>`."""
    try:
        from realrun.cloud.server import serve  # fastapi, uvicorn: the 'realrun' extra
    except ImportError as exc:
        raise ConfigError(
            "realrun", args.role, f"{exc.name} is not installed (pip install -e '.[realrun]')"
        ) from None
    if args.role == "cloud":
        return serve(args)
    if args.role == "local":
        try:
            return run_local_command(args, argv)
        except ServerError as exc:
            print(f"pipesd: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return interrupted(args.out)
    import httpx  # optional (extra 'realrun'): the testbed's HTTP client

    point = expand_sweep(args.scenario, args.overrides)[0]
    sampling = sampling_spec(args)
    check_sampling_points(sampling, [point])
    check_recorded_conditions(args.scenario, [point])
    draft = resolve_model(args.draft)
    make_out(args, "realrun edge", argv)
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
            sampling=sampling,
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
