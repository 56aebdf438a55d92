"""Runs a scenario: every sweep point x policy x seed, writing results as they finish."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulator.engine import SimResult, Span, simulate
from simulator.metrics import SUMMARY_METRICS, fleet_metrics, summarise
from simulator.records import RECORD_FIELDS, RequestRecord
from simulator.results import RowAppender, write_json, write_table
from simulator.scenario import SweepPoint

PACKAGES = ("pipesd-kit", "simpy", "numpy", "scipy", "scikit-optimize", "scikit-learn", "pydantic")


@dataclass(frozen=True)
class Task:
    """One simulation: a sweep point, a policy (index into the point's policies) and a seed."""

    point: SweepPoint
    policy_index: int
    seed: int


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def plan_tasks(points: Sequence[SweepPoint]) -> list[Task]:
    """All simulations of a run, point by point, policy by policy, seed by seed."""
    return [
        Task(point, i, seed)
        for point in points
        for i in range(len(point.scenario.policies))
        for seed in point.scenario.model.seeds
    ]


def request_rows(task: Task, result: SimResult) -> list[dict[str, Any]]:
    """One results.csv row per request."""
    entry = task.point.scenario.policies[task.policy_index]
    rows = []
    for record in result.records:
        row: dict[str, Any] = {"point": task.point.index, **task.point.axes}
        row.update(policy=entry.label, policy_name=entry.name, seed=task.seed)
        row.update(asdict(record))
        row.update(ttft_ms=1e3 * record.ttft_s, tpt_ms=1e3 * record.tpt_s)
        rows.append(row)
    return rows


def summary_rows(point: SweepPoint, results: dict[int, list[SimResult]]) -> list[dict[str, Any]]:
    """One summary row per policy at a sweep point, with speedup vs the reference policy."""
    scenario = point.scenario
    rows = []
    for index, entry in enumerate(scenario.policies):
        runs = results.get(index, [])
        records: list[RequestRecord] = [r for run in runs for r in run.records]
        metrics = summarise(records, max(len(runs), 1))
        metrics.update(fleet_metrics(runs))
        state = runs[-1].policy_state if runs else {}
        row: dict[str, Any] = {"point": point.index, **point.axes}
        row.update(policy=entry.label, policy_name=entry.name, seeds=len(runs))
        row.update(metrics)
        row["policy_state"] = json.dumps(state, sort_keys=True) if state else ""
        rows.append(row)
    reference = next((r for r in rows if r["policy"] == scenario.model.reference_policy), None)
    for row in rows:
        ref_tpt = reference["tpt_ms"] if reference else math.nan
        row["speedup"] = ref_tpt / row["tpt_ms"] if row["tpt_ms"] else math.nan
    return rows


def summary_columns(points: Sequence[SweepPoint]) -> list[str]:
    """Summary CSV columns: point, sweep axes, policy, the metrics, and the policy's state."""
    axes = list(points[0].axes) if points else []
    return ["point", *axes, "policy", "policy_name", "seeds", *SUMMARY_METRICS, "policy_state"]


def manifest(
    scenario_path: Path,
    points: Sequence[SweepPoint],
    command: Sequence[str],
    status: str,
    started: str,
) -> dict[str, Any]:
    """Everything needed to reproduce a run: scenario, profile and hash, seeds, versions."""
    first = points[0].scenario
    scenario_bytes = scenario_path.read_bytes()
    profiles = {str(p.scenario.profile.path): p.scenario.profile.sha256 for p in points}
    return {
        "status": status,
        "started": started,
        "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": list(command),
        "scenario": {
            "path": str(scenario_path),
            "sha256": hashlib.sha256(scenario_bytes).hexdigest(),
            "resolved": first.raw,
        },
        "profiles": profiles,
        "profile_provenance": first.profile.profile.provenance.source,
        "seeds": first.model.seeds,
        "sweep_axes": {
            axis: sorted({str(p.axes[axis]) for p in points}) for axis in points[0].axes
        },
        "points": [{"point": p.index, **p.axes} for p in points],
        "policies": [
            {"label": e.label, "name": e.name, "params": e.params.model_dump(mode="json")}
            for e in first.policies
        ],
        "versions": package_versions(),
        "platform": platform.platform(),
    }


def run_scenario(
    scenario_path: Path,
    points: Sequence[SweepPoint],
    out_dir: Path,
    command: Sequence[str] = tuple(sys.argv),
    on_task_done: Callable[[Task, SimResult], None] | None = None,
    record_timeline: bool = False,
) -> list[dict[str, Any]]:
    """Run every task, writing results.csv as it goes; returns the summary rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(
        out_dir / "manifest.json", manifest(scenario_path, points, command, "running", started)
    )
    axes = list(points[0].axes)
    columns = ["point", *axes, "policy", "policy_name", "seed", *RECORD_FIELDS, "ttft_ms", "tpt_ms"]
    appender = RowAppender(out_dir / "results.csv", columns)
    summary_path = out_dir / "summary.csv"
    sum_columns = summary_columns(points)
    all_rows: list[dict[str, Any]] = []
    try:
        for point in points:
            results: dict[int, list[SimResult]] = {}
            for task in plan_tasks([point]):
                entry = point.scenario.policies[task.policy_index]
                result = simulate(point.scenario, entry, task.seed, record_timeline)
                results.setdefault(task.policy_index, []).append(result)
                appender.append(request_rows(task, result))
                if record_timeline and result.timeline is not None:
                    _write_timeline(out_dir, task, result)
                if on_task_done is not None:
                    on_task_done(task, result)
            all_rows.extend(summary_rows(point, results))
            write_table(summary_path, sum_columns, all_rows)
    finally:
        appender.close()
    write_json(
        out_dir / "manifest.json", manifest(scenario_path, points, command, "complete", started)
    )
    return all_rows


def _write_timeline(out_dir: Path, task: Task, result: SimResult) -> None:
    entry = task.point.scenario.policies[task.policy_index]
    name = f"timeline_p{task.point.index}_{entry.label}_s{task.seed}.csv"
    rows = (span._asdict() for span in result.timeline or [])
    write_table(out_dir / "timelines" / name, list(Span._fields), rows)
