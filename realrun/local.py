"""`pipesd realrun local`: every sweep point of a scenario on this machine, each against its own
cloud server subprocess behind the point's shaped link, results in the simulator's layout.

Per point: open the shaped link (realrun.link.shaping), start `python -m realrun.cloud.server`
(batching as the point's `[cloud]` says) through the link's command prefix on a free port,
wait for /v1/health, run the testbed through the link, then always stop the server
(terminate, then kill) and close the link, also on Ctrl-C. Each point's files land in
`OUT/points/p<i>/` as it finishes; `OUT/summary.csv` and `results.csv` (all finished points,
sweep axes as columns), `OUT/timelines/` and `OUT/manifest.json` are rewritten after every
point, so an interruption loses only the point in progress.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from policies.batching import BatchRule
from realrun.cloud.settings import ServerSettings, settings_for_body
from realrun.link.reaper import die_with_parent
from realrun.testbed import run_testbed
from realrun.testbed_rules import (
    SamplingSpec,
    body_limit,
    check_recorded_conditions,
    check_sampling,
    entry_skip_reason,
    sampling_info,
    verification,
)
from simulator.errors import ConfigError
from simulator.outdir import claim_out_dir
from simulator.provenance import package_versions
from simulator.results import write_json, write_table
from simulator.runner import manifest

if TYPE_CHECKING:
    from simulator.scenario import SweepPoint

LOCAL_KIND = "realrun local"
"""The `kind` in the manifest of a `pipesd realrun local` folder (simulator.outdir)."""
SHAPING_MODES = ("auto", "tbf", "software", "none")
"""Values of --shaping (see realrun.link.shaping.open_link)."""

ACCEPTANCE_MODES = ("real", "synthetic")
"""Values of --acceptance (see realrun.testbed.run_testbed)."""

REALRUN_PACKAGES = (
    "llama_cpp_python",
    "fastapi",
    "uvicorn",
    "httpx",
    "msgpack",
    "torch",
    "transformers",
)
"""Packages whose versions a testbed result also depends on."""

STARTUP_TIMEOUT_S = 300.0
"""How long a server may take to load its model and answer /v1/health."""

STOP_GRACE_S = 10.0
"""How long a terminated server may take to exit before it is killed."""

MAX_SERVER_WINDOW_S = 1.0
"""The longest batching window the server takes (realrun.cloud.settings: 1000 ms)."""

LOG_TAIL_LINES = 12
"""Lines of a dead server's stderr quoted in the error."""


class ServerError(RuntimeError):
    """The cloud server subprocess died or never became healthy (the message quotes its log)."""


class RunningServer(NamedTuple):
    """A healthy cloud server subprocess: the process, its command line, its /v1/health."""

    process: subprocess.Popen[bytes]
    command: list[str]
    health: dict[str, Any]


@dataclass(frozen=True)
class LocalOptions:
    """What `realrun local` needs beyond the scenario: models, threads, shaping, acceptance,
    sampling.

    `target`: a GGUF file for the llama backend; for the torch backend also a Hugging Face
    folder or a named random-weight shape (models/shapes.py). `target_device`: the server's
    `--device` (cpu, cuda, cuda:N). `sampling`: speculative sampling at the edge and the
    server (realrun.testbed_rules.SamplingSpec; None: greedy); not with synthetic acceptance.
    """

    target: Path | str
    draft: Path
    target_threads: int = 1
    draft_threads: int = 1
    shaping: str = "auto"
    acceptance: str = "real"
    target_backend: str = "llama"
    target_device: str = "cpu"
    startup_timeout_s: float = STARTUP_TIMEOUT_S
    speed_probe: bool = False
    """Time realrun.edge.speed_probe's reference before each session (OUT/speeds.csv)."""
    sampling: SamplingSpec | None = None


def check_points(
    scenario_path: Path, points: Sequence[SweepPoint], options: LocalOptions | None = None
) -> dict[str, str]:
    """Refuse what the testbed cannot run (fleets; compute speeds and uplink jitter:
    realrun.testbed_rules.check_recorded_conditions; no runnable policy; sampling settings that
    do not fit a point: realrun.testbed_rules.check_sampling; payloads needing request bodies past
    the server's ceiling: realrun.testbed_rules.body_limit); returns the skipped policies
    (label -> reason)."""
    for point in points:
        body_limit(point.scenario, options.sampling if options is not None else None)
    if options is not None:
        for point in points:
            check_sampling(options.sampling, point.scenario, options.acceptance)

    check_window(scenario_path, points)
    check_recorded_conditions(scenario_path, points)
    scenario = points[0].scenario
    if scenario.model.edge_groups:
        raise ConfigError(
            scenario_path,
            "edge_groups",
            "validation and this runner take one edge (remove [[edge_groups]]); many edges "
            "run with `pipesd realrun local` (realrun.fleet)",
        )
    sampling = options.sampling if options is not None else None
    skipped = {e.label: r for e in scenario.policies if (r := entry_skip_reason(e, sampling))}
    if len(skipped) == len(scenario.policies):
        raise ConfigError(
            scenario_path,
            "policies",
            f"no policy the testbed can run (skipped: {', '.join(skipped)}); "
            "it runs edge-drafting policies",
        )
    return skipped


def check_window(scenario_path: Path, points: Sequence[SweepPoint]) -> None:
    """Refuse a batching window the server does not take (one-line ConfigError)."""
    for point in points:
        window_s = point.scenario.model.cloud.batch_window_s
        if window_s > MAX_SERVER_WINDOW_S:
            why = f"the testbed's server takes at most {MAX_SERVER_WINDOW_S:g} s"
            raise ConfigError(scenario_path, "cloud.batch_window_s", f"{why} (got {window_s:g})")


def batch_rule(point: SweepPoint) -> BatchRule:
    """The server's batching: the point's `[cloud] max_batch` and `batch_window_s`."""
    cloud = point.scenario.model.cloud
    return BatchRule(cloud.max_batch, cloud.batch_window_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` non-empty lines of a log file (empty if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def stop_server(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """Terminate the server's process group, kill it if it outlives `grace_s`, reap it."""

    def signal_group(sig: signal.Signals) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    if process.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            process.wait()


def wait_healthy(
    process: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float
) -> dict[str, Any]:
    """Poll `url`/v1/health until the server answers; ServerError if it dies or times out."""
    import httpx  # optional (extra 'realrun'): the testbed's HTTP client
    import msgpack  # optional (extra 'realrun'): the testbed's wire format

    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise ServerError(
                f"the cloud server exited with code {code} before answering /v1/health; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            response = httpx.get(f"{url}/v1/health", timeout=2.0)
            if response.status_code == 200:
                return dict(msgpack.unpackb(response.content, raw=False))
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(
                f"the cloud server did not answer {url}/v1/health within {timeout_s:.0f} s; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.2)


@contextlib.contextmanager
def cloud_server(
    link: Any,
    port: int,
    options: LocalOptions,
    log_path: Path,
    rule: BatchRule | None = None,
    body_bytes: int | None = None,
    kv_slots: int | None = None,
) -> Iterator[RunningServer]:
    """Run the cloud server behind `link` on `port` while the block runs, batching by `rule`
    (the scenario's `[cloud]`: `batch_rule`; None: the defaults), taking request bodies of
    `body_bytes` (the scenario's `realrun.testbed_rules.body_limit`; None: the default), keeping
    `kv_slots` sessions in the llama target's KV cache (None: the server's default, 8)."""
    rule = rule if rule is not None else BatchRule()
    spec = getattr(link, "spec", None)  # a shaped link: its uplink sets the body timeout
    uplink_mbps = spec.uplink.at(0.0) if spec is not None else None
    body = body_bytes or ServerSettings.max_body_bytes
    settings = settings_for_body(ServerSettings(), body, uplink_mbps)
    command = [
        *link.server_command_prefix,
        sys.executable,
        "-m",
        "realrun.cloud.server",
        "--model",
        str(options.target),
        "--threads",
        str(options.target_threads),
        "--backend",
        options.target_backend,
        "--device",
        options.target_device,
        "--host",
        link.server_host,
        "--port",
        str(port),
        "--rate-limit",
        "0",
        "--max-batch",
        str(rule.max_batch),
        "--batch-window-ms",
        repr(rule.window_s * 1e3),
        "--max-body-bytes",
        str(settings.max_body_bytes),
        "--max-buffered-bytes",
        str(settings.max_buffered_bytes),
        "--body-timeout-s",
        repr(settings.body_timeout_s),
    ]
    if kv_slots is not None:
        command += ["--kv-slots", str(kv_slots)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # a session of its own: Ctrl-C reaches only this process, which then stops the server
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=die_with_parent,  # a killed run takes its server with it
        )
    try:
        health = wait_healthy(process, link.client_url(port), log_path, options.startup_timeout_s)
        yield RunningServer(process, command, health)
    finally:
        stop_server(process)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and rows, as text (so rewriting them changes nothing)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def merge_points(out_dir: Path, finished: Sequence[int]) -> None:
    """Rewrite OUT/summary.csv and results.csv (and speeds.csv and the compute traces, where
    the points have them, and outputs.csv) from the finished points' own tables."""
    optional = ("speeds.csv", "compute_edge.csv", "compute_cloud.csv", "outputs.csv")
    for name in ("summary.csv", "results.csv", *optional):
        columns: list[str] = []
        rows: list[dict[str, str]] = []
        for index in finished:
            path = out_dir / "points" / f"p{index}" / name
            if name in optional and not path.is_file():
                continue
            header, part = read_table(path)
            columns = columns or header
            rows.extend(part)
        if columns:
            write_table(out_dir / name, columns, rows)


def move_timelines(point_dir: Path, out_dir: Path) -> None:
    """Move a point's timelines into OUT/timelines (named by point, as the simulator's)."""
    source = point_dir / "timelines"
    if not source.is_dir():
        return
    target = out_dir / "timelines"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.csv")):
        os.replace(path, target / path.name)
    source.rmdir()


def run_point(
    scenario_path: Path,
    point: SweepPoint,
    options: LocalOptions,
    point_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One sweep point: shaped link, server, testbed, teardown; returns the summary rows and
    what was used (the link's description, the server's command and health)."""
    from realrun.link.shaping import LinkSpec, open_link  # loads httpx (optional) when imported

    top_k = check_sampling(options.sampling, point.scenario, options.acceptance)
    port = free_port()
    spec = LinkSpec.from_point(point)
    rule = batch_rule(point)
    with (
        open_link(spec, mode=options.shaping, server_port=port) as link,
        cloud_server(
            link,
            port,
            options,
            point_dir / "server.log",
            rule,
            body_limit(point.scenario, options.sampling),
        ) as server,
    ):
        rows = run_testbed(
            scenario_path,
            point,
            link.client_url(port),
            options.draft,
            options.draft_threads,
            point_dir,
            list(command),
            progress=progress,
            transport=link.transport(),
            link_info=link.describe(),
            acceptance=options.acceptance,
            on_start=link.start_clock,
            uplink_meter=link.uplink_payload_bytes,
            speed_probe=options.speed_probe,
            sampling=options.sampling,
        )
        used = {"link": link.describe(), "server": server.command, "health": server.health}
        used["batching"] = {"max_batch": rule.max_batch, "batch_window_s": rule.window_s,
                            "rule": "policies/batching.py (the simulator's)"}  # fmt: skip
        if options.sampling is not None:
            used["sampling"] = sampling_info(options.sampling, top_k)
        used["verification"] = {
            entry.label: verification(entry, options.sampling, options.acceptance)
            for entry in point.scenario.policies
            if entry_skip_reason(entry, options.sampling) is None
        }
    return rows, used


def run_local(
    scenario_path: Path,
    points: Sequence[SweepPoint],
    options: LocalOptions,
    out_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None = None,
    check: Callable[..., dict[str, str]] = check_points,
    runner: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]] = run_point,
) -> list[dict[str, Any]]:
    """Run every point on the testbed (see the module docstring); returns all summary rows.
    `check` and `runner`: how the points are checked and run (realrun.fleet's for many edges;
    same signatures as `check_points` and `run_point`)."""
    skipped = check(scenario_path, points, options)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    used: dict[int, dict[str, Any]] = {}
    finished: list[int] = []

    def write_manifest(status: str) -> None:
        data = manifest(scenario_path, points, command, status, started)
        data["testbed"] = {
            "target": str(options.target),
            "target_backend": options.target_backend,
            "target_device": options.target_device,
            "draft": str(options.draft),
            "target_threads": options.target_threads,
            "draft_threads": options.draft_threads,
            "shaping": options.shaping,
            "acceptance": options.acceptance,
            "sampling": (
                None
                if options.sampling is None
                else {
                    "temperature": float(options.sampling.temperature),
                    "top_k": options.sampling.top_k,  # None: per point (points.<i>.sampling)
                }
            ),
            "verification": {  # per point too: points.<i>.verification
                entry.label: verification(entry, options.sampling, options.acceptance)
                for entry in points[0].scenario.policies
                if entry.label not in skipped  # the runner's check (a fleet runs DiP-SD)
            },
            "points": {str(i): used[i] for i in finished},
            "finished_points": finished,
            "skipped": skipped,
            "versions": package_versions(REALRUN_PACKAGES),
        }
        data["kind"] = LOCAL_KIND
        write_json(out_dir / "manifest.json", data)

    claim_out_dir(out_dir, LOCAL_KIND, force=True)  # never clears a folder of anything else
    for stale in ("summary.csv", "results.csv"):  # an earlier run's tables, never mixed in
        (out_dir / stale).unlink(missing_ok=True)
    for folder in ("points", "timelines"):
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    write_manifest("running")
    rows: list[dict[str, Any]] = []
    try:
        for point in points:
            point_dir = out_dir / "points" / f"p{point.index}"

            def report(message: str, index: int = point.index) -> None:
                if progress is not None:
                    progress(f"point {index}: {message}")

            point_rows, used[point.index] = runner(
                scenario_path, point, options, point_dir, command, report
            )
            rows.extend(point_rows)
            move_timelines(point_dir, out_dir)
            finished.append(point.index)
            merge_points(out_dir, finished)
            write_manifest("running")
    except KeyboardInterrupt:
        write_manifest("interrupted")
        raise
    except BaseException:
        write_manifest("failed")
        raise
    write_manifest("complete")
    return rows
