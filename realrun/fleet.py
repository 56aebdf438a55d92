"""A many-edge testbed run: N edge processes, each behind its own shaped link, one batching cloud.

For a scenario with `[[edge_groups]]` (`pipesd realrun local` sends it here), per sweep point:
one cloud server on loopback (batching by the point's `[cloud]`: realrun.local.batch_rule),
then per seed the edges' links (kernel shaping: each edge in its own namespace with its own
tbf qdiscs and delay relay, realrun.link.edge_link; without root, each edge shapes its own
link in process, realrun.link.softlink), and per runnable policy one process per edge
(realrun.fleet_edge), all started together at one time on the machine's clock. The cloud
batches their NAVs across edges. Each edge's files land in
`points/p<i>/edges/<policy>_s<seed>/e<j>/`; the point's `results.csv` holds every edge's
requests (`edge` column), `summary.csv` one row per (policy, seed, edge) and `batches.csv` the
cloud batch size of every NAV (the manifest: their histogram per session). The compute
traces: `compute_edge.csv` (each edge's requests' draft speed against the profile) and
`compute_cloud.csv` (each cloud batch's, regrouped from its edges' NAVs: realrun.fleet_trace).

Teardown: the server and the edges get SIGKILL when this process dies (Linux's parent-death
signal), are terminated on every exit path, and a watchdog (realrun.link.reaper) deletes the
run's namespaces even after SIGKILL. DiP-SD: per seed the plan is computed once from the scenario
as the simulator computes it (simulator.dipsd_plan), each edge gets its draft length and seats
its sessions in the plan on the server, which verifies the plan's batches in turn
(policies/dipsd/turns.py, the simulator's rule). Clocks: every edge reports when it started
against the start it was given (`clock.json`); a spread above CLOCK_SKEW_LIMIT_S is an error.
"""

from __future__ import annotations

import contextlib
import csv
import json
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from policies.registry import POLICIES, make_policy
from realrun.fleet_trace import CLOUD_COLUMNS, cloud_rows
from realrun.link.netns import unavailable_reason
from realrun.link.reaper import die_with_parent, start_reaper, stop_reaper
from realrun.local import (
    LocalOptions,
    ServerError,
    check_window,
    cloud_server,
    free_port,
    log_tail,
    run_local,
)
from realrun.local import batch_rule as point_batch_rule
from realrun.testbed import COMPUTE_FILES
from realrun.testbed_rules import body_limit, check_recorded_conditions, skip_reason
from simulator.dipsd_plan import fleet_plan, plan_batches
from simulator.engine import scenario_plan
from simulator.errors import ConfigError
from simulator.fleet import edge_specs
from simulator.results import write_table
from simulator.scenario import SweepPoint

MAX_EDGES = 16
"""Most edges one machine runs (each edge is a process with its own draft model)."""
START_DELAY_S = 1.0
"""The common start: this long after the last edge said it was ready."""
READY_TIMEOUT_S = 300.0
"""Longest the edges may take to load their drafts and reach the server."""
CLOCK_SKEW_LIMIT_S = 0.25
"""Most an edge may start after the common start (the manifest keeps the measured spread; past
this the machine is too busy for the edges to start together)."""
KV_SLOTS = 8
"""The fewest sessions the fleet's server keeps in its KV cache (the server's default); more
edges get one slot each, so no session is evicted and re-prefilled (a cost not simulated)."""
EDGE_TIMEOUT_S = 3600.0
"""Longest one (policy, seed) session of the fleet may take."""


def fleet_size(point: SweepPoint) -> int:
    """Edges of the point's scenario."""
    return sum(group.count for group in point.scenario.model.edge_groups) or 1


def check_fleet(
    scenario_path: Path, points: Sequence[SweepPoint], options: LocalOptions
) -> dict[str, str]:
    """Refuse fleet settings the testbed cannot run (one-line ConfigError each); returns the
    skipped policies (label -> reason)."""
    check_window(scenario_path, points)
    check_recorded_conditions(scenario_path, points)
    for point in points:
        edges = fleet_size(point)
        if edges > MAX_EDGES:
            raise ConfigError(scenario_path, "edge_groups", f"the testbed runs at most "
                              f"{MAX_EDGES} edges on one machine (got {edges})")  # fmt: skip
        for i, group in enumerate(point.scenario.model.edge_groups):
            if group.arrival != "closed" or group.start_spread_s > 0:
                raise ConfigError(scenario_path, f"edge_groups[{i}].arrival", "the testbed's "
                                  "edges run requests back to back from one start (arrival = "
                                  "'closed', start_spread_s = 0)")  # fmt: skip
    for point in points:
        body_limit(point.scenario)  # one line if a payload needs bodies past the ceiling
        planned = [e for e in point.scenario.policies if _uses_plan(e.name)]
        for seed, entry in ((s, e) for s in point.scenario.model.seeds for e in planned):
            session_plan(point, seed, entry.label)  # one line if the scenario cannot make a plan
    if options.sampling is not None:
        raise ConfigError("--temperature", str(options.sampling.temperature),
                          "not available on a many-edge testbed (greedy only)")  # fmt: skip
    if options.shaping not in ("auto", "tbf", "software", "none"):
        raise ConfigError("--shaping", options.shaping, "must be auto, tbf, software or none")
    scenario = points[0].scenario
    skipped = {e.label: r for e in scenario.policies if (r := fleet_skip_reason(e.name))}
    if len(skipped) == len(scenario.policies):
        raise ConfigError(scenario_path, "policies", f"no policy the many-edge testbed can run "
                          f"(skipped: {', '.join(skipped)})")  # fmt: skip
    return skipped


def fleet_skip_reason(name: str) -> str | None:
    """Why a policy cannot run on the many-edge testbed (None: it can)."""
    return None if _uses_plan(name) else skip_reason(name)


def _uses_plan(name: str) -> bool:
    """Whether the policy drafts by a fleet plan (DiP-SD)."""
    return bool(getattr(POLICIES[name][1], "uses_fleet_plan", False))


def session_plan(point: SweepPoint, seed: int, label: str | None = None) -> dict[str, Any]:
    """DiP-SD's plan for `seed`'s edges, made as the simulator makes it (policy `label`'s fixed
    `plan` where it gives one, else the optimiser's): the batches (edge indices, in
    verification order), each edge's draft length, the planned throughput."""
    scenario, specs = point.scenario, edge_specs(point.scenario, seed)
    entry = next((e for e in scenario.policies if e.label == label), None)
    if entry is None:
        plan = fleet_plan(scenario, specs)
    else:
        plan = scenario_plan(scenario, specs, entry, make_policy(entry.name, entry.params, seed))
    return {
        "batches": [list(batch) for batch in plan_batches(plan)],
        "lengths": list(plan.lengths),
        "throughput_tokens_per_s": plan.throughput_tokens_per_s,
    }


def server_link(point: SweepPoint, port: int) -> Any:
    """The server's loopback link, with the slowest edge's spec (its uplink sets the server's
    body timeout: realrun.local.cloud_server)."""
    from realrun.fleet_edge import edge_link_spec  # imports httpx (realrun.link.shaping)
    from realrun.link.shaping import ShapedLink  # imports httpx

    specs = [edge_link_spec(point, seed, edge) for seed in point.scenario.model.seeds
             for edge in range(fleet_size(point))]  # fmt: skip
    return ShapedLink(min(specs, key=lambda spec: spec.uplink.at(0.0)), port)


def kernel_shaping(mode: str) -> bool:
    """Whether edges get namespaces with tbf qdiscs (else software or no shaping); ConfigError
    for "tbf" where it is unavailable."""
    if mode in ("software", "none"):
        return False
    reason = unavailable_reason()
    if reason is not None and mode == "tbf":
        raise ConfigError("--shaping", "tbf", f"not available here: {reason}")
    return reason is None


@contextlib.contextmanager
def edge_links(point: SweepPoint, seed: int, port: int, kernel: bool) -> Iterator[list[Any]]:
    """The edges' kernel links for `seed` (an empty list without kernel shaping)."""
    from realrun.fleet_edge import edge_link_spec  # imports httpx (realrun.link.shaping)
    from realrun.link.edge_link import EdgeLink  # imports httpx (realrun.link.shaping)

    links: list[Any] = []
    try:
        if kernel:
            for edge in range(fleet_size(point)):
                links.append(EdgeLink(edge, edge_link_spec(point, seed, edge), port))
        yield links
    finally:
        for link in links:
            link.close()


def run_session(
    scenario_path: Path,
    point: SweepPoint,
    options: LocalOptions,
    seed: int,
    label: str,
    links: list[Any],
    port: int,
    session_dir: Path,
    plan: dict[str, Any] | None = None,
) -> list[Path]:
    """One (seed, policy) session on every edge at once (a DiP-SD `plan`: `session_plan`,
    handed to every edge); the edges' output folders."""
    edges = fleet_size(point)
    go, pickled = session_dir / "go", session_dir / "point.pickle"
    session_dir.mkdir(parents=True, exist_ok=True)
    with pickled.open("wb") as handle:  # the point as resolved here, every --set applied
        pickle.dump(point, handle)
    if plan is not None:
        (session_dir / "plan.json").write_text(json.dumps(plan) + "\n")
    shaping = "tbf" if links else ("software" if options.shaping != "none" else "none")
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    folders = []
    try:
        for edge in range(edges):
            folder = session_dir / f"e{edge}"
            folder.mkdir(parents=True, exist_ok=True)
            prefix = links[edge].exec_prefix() if links else []
            url = links[edge].url if links else f"http://127.0.0.1:{port}"
            command = [
                *prefix,
                sys.executable,
                "-m",
                "realrun.fleet_edge",
                "--scenario",
                str(scenario_path),
                "--point",
                str(pickled),
                "--seed",
                str(seed),
                "--policy",
                label,
                "--edge",
                str(edge),
                "--server",
                url,
                "--draft",
                str(options.draft),
                "--threads",
                str(options.draft_threads),
                "--acceptance",
                options.acceptance,
                "--shaping",
                shaping,
                "--go",
                str(go),
                "--out",
                str(folder),
            ]
            if links:
                command += ["--uplink-device", links[edge].uplink_device]
            if plan is not None:
                command += ["--plan", str(session_dir / "plan.json")]
            log = folder / "edge.log"
            with log.open("wb") as handle:
                process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                           stderr=handle, preexec_fn=die_with_parent)  # fmt: skip
            processes.append((process, log))
            folders.append(folder)
        wait_ready(processes, folders)
        start_epoch = time.time() + START_DELAY_S
        # Written whole, then renamed: an edge polling for the file never reads it half written.
        go.with_suffix(".tmp").write_text(repr(start_epoch))
        go.with_suffix(".tmp").replace(go)
        time.sleep(max(0.0, start_epoch - time.time()))
        for link in links:
            link.start_clock()
        deadline = time.monotonic() + EDGE_TIMEOUT_S
        for process, log in processes:
            code = process.wait(max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise ServerError(f"edge process exited with code {code}; last lines of {log}:\n"
                                  f"{log_tail(log)}")  # fmt: skip
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return folders


def wait_ready(processes: Sequence[tuple[subprocess.Popen[bytes], Path]],
               folders: Sequence[Path]) -> None:  # fmt: skip
    """Wait until every edge has loaded its draft (OUT/ready); ServerError if one dies first
    or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all((folder / "ready").is_file() for folder in folders):
        for process, log in processes:
            if process.poll() is not None:
                raise ServerError(f"edge process exited with code {process.returncode} before "
                                  f"its start; last lines of {log}:\n{log_tail(log)}")  # fmt: skip
        if time.monotonic() > deadline:
            raise ServerError(f"the edges were not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def clock_check(folders: Sequence[Path]) -> dict[str, Any]:
    """How far apart the edges started (one clock: this machine's); ServerError past the
    limit (an edge that loaded its draft too slowly)."""
    late = []
    for folder in folders:
        info = json.loads((folder / "clock.json").read_text())
        late.append(info["started_epoch_s"] - info["start_epoch_s"])
    spread = max(late) - min(late)
    if max(late) > CLOCK_SKEW_LIMIT_S:
        limit_ms = CLOCK_SKEW_LIMIT_S * 1e3
        raise ServerError(f"an edge started {max(late) * 1e3:.0f} ms after the common start "
                          f"(limit {limit_ms:.0f} ms): the machine is too busy to start the "
                          "edges together")  # fmt: skip
    return {"late_max_s": max(late), "spread_s": spread, "clock": "one machine's real-time clock"}


def batch_stats(navs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The session's NAVs by the size of the cloud batch they were verified in."""
    sizes = [int(row["batch_size"]) for row in navs]
    histogram = {str(size): sizes.count(size) for size in sorted(set(sizes))}
    mean = sum(sizes) / len(sizes) if sizes else float("nan")
    return {"navs": len(sizes), "mean_batch_size": mean, "navs_by_batch_size": histogram}


def read_rows(path: Path, extra: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """A CSV table's header and rows (numbers as floats), each row with `extra` in front."""

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [extra | {k: value(v) for k, v in row.items()} for row in reader]
        return list(reader.fieldnames or []), rows


def run_fleet(
    scenario_path: Path,
    points: Sequence[SweepPoint],
    options: LocalOptions,
    out_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """`pipesd realrun local` for a scenario with `[[edge_groups]]`: realrun.local.run_local's
    folder, manifest and teardown, each point run by `run_fleet_point`."""
    return run_local(scenario_path, points, options, out_dir, command, progress,
                     check=check_fleet, runner=run_fleet_point)  # fmt: skip


def run_fleet_point(
    scenario_path: Path,
    point: SweepPoint,
    options: LocalOptions,
    point_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One sweep point on the many-edge testbed (see the module docstring); returns the summary
    rows (one per policy, seed and edge) and what was used."""
    kernel = kernel_shaping(options.shaping)
    reaper = start_reaper() if kernel else None
    port = free_port()
    rule = point_batch_rule(point)
    model = point.scenario.model
    runnable = [e.label for e in point.scenario.policies if not fleet_skip_reason(e.name)]
    loopback = server_link(point, port)
    summary: tuple[list[str], list[dict[str, Any]]] = ([], [])
    results: tuple[list[str], list[dict[str, Any]]] = ([], [])
    batches: tuple[list[str], list[dict[str, Any]]] = ([], [])
    drafts: tuple[list[str], list[dict[str, Any]]] = ([], [])  # the edges' compute traces
    cloud: list[dict[str, Any]] = []  # the cloud's, one row per batch (realrun.fleet_trace)
    used: dict[str, Any] = {"edges": fleet_size(point), "sessions": {}, "links": {}}
    used["batching"] = {"max_batch": rule.max_batch, "batch_window_s": rule.window_s,
                        "rule": "policies/batching.py (the simulator's)"}  # fmt: skip
    try:
        body = body_limit(point.scenario)
        log = point_dir / "server.log"
        slots = max(KV_SLOTS, fleet_size(point))  # every edge's session stays resident
        with cloud_server(loopback, port, options, log, rule, body, slots) as server:
            used["server"], used["health"] = server.command, server.health
            for seed in model.seeds:
                with edge_links(point, seed, port, kernel) as links:
                    used["links"][str(seed)] = [link.describe() for link in links] or _soft_links(
                        point, seed, options
                    )
                    for label in runnable:
                        session = point_dir / "edges" / f"{label}_s{seed}"
                        name = next(e.name for e in point.scenario.policies if e.label == label)
                        plan = session_plan(point, seed, label) if _uses_plan(name) else None
                        folders = run_session(scenario_path, point, options, seed, label,
                                              links, port, session, plan)  # fmt: skip
                        clocks = clock_check(folders)
                        navs: list[dict[str, Any]] = []
                        for folder in folders:
                            head, rows = read_rows(folder / "batches.csv", {})
                            batches = (batches[0] or [*head, "batch"], batches[1] + rows)
                            navs.extend(rows)
                        run = {"point": point.index, **point.axes, "policy": label, "seed": seed}
                        target = point.scenario.profile.profile.target_latency
                        cloud.extend(cloud_rows(run, navs, target))  # numbers each NAV's batch
                        used["sessions"][f"{label}_s{seed}"] = clocks | batch_stats(navs)
                        if plan is not None:
                            used["sessions"][f"{label}_s{seed}"]["plan"] = plan
                        for edge, folder in enumerate(folders):
                            extra = {"edge": edge}
                            head, rows = read_rows(folder / "summary.csv", extra)
                            summary = (summary[0] or ["edge", *head], summary[1] + rows)
                            head, rows = read_rows(folder / "results.csv", {})
                            results = (results[0] or head, results[1] + rows)
                            head, rows = read_rows(folder / COMPUTE_FILES["edge"], extra)
                            drafts = (drafts[0] or [*head, "edge"], drafts[1] + rows)
                        if progress is not None:
                            progress(f"{label} seed {seed}: {len(folders)} edges done")
    finally:
        if reaper is not None:
            stop_reaper(reaper)
    write_table(point_dir / "summary.csv", *summary)
    write_table(point_dir / "results.csv", *results)
    write_table(point_dir / "batches.csv", *batches)
    write_table(point_dir / COMPUTE_FILES["edge"], *drafts)
    cloud_head = ["point", *point.axes, "policy", "seed", *CLOUD_COLUMNS]
    write_table(point_dir / COMPUTE_FILES["cloud"], cloud_head, cloud)
    return summary[1], used


def _soft_links(point: SweepPoint, seed: int, options: LocalOptions) -> list[dict[str, Any]]:
    """The edges' links without kernel shaping (software-shaped in each edge, or none)."""
    from realrun.fleet_edge import edge_link_spec  # imports httpx (realrun.link.shaping)

    kind = "software (in each edge process)" if options.shaping != "none" else "none"
    return [
        {"kind": kind, "edge": e, **edge_link_spec(point, seed, e).describe()}
        for e in range(len(edge_specs(point.scenario, seed)))
    ]


__all__ = ["MAX_EDGES", "check_fleet", "fleet_size", "run_fleet", "run_fleet_point"]
