"""Runs a scenario: every sweep point x policy x seed, writing results as they finish."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from simulator.backends import Backend, InlineBackend
from simulator.engine import SimResult, simulate
from simulator.errors import ConfigError
from simulator.metrics import SUMMARY_METRICS, fleet_metrics, summarise
from simulator.outdir import MANIFEST, claim_out_dir, read_manifest
from simulator.provenance import package_versions
from simulator.records import RECORD_FIELDS, RequestRecord, Span
from simulator.results import write_json, write_table
from simulator.scenario import SweepPoint

RUN_KIND = "run"
"""The `kind` in the manifest of a `pipesd run` folder (simulator.outdir)."""
MAX_PART_BYTES = 512 * 1024 * 1024
"""A part file larger than this is damaged (a task's part is at most megabytes)."""

PACKAGES = ("pipesd-kit", "simpy", "numpy", "scipy", "scikit-optimize", "scikit-learn", "pydantic")


@dataclass(frozen=True)
class Task:
    """One simulation: a sweep point, a policy (index into the point's policies) and a seed."""

    point: SweepPoint
    policy_index: int
    seed: int


def plan_tasks(points: Sequence[SweepPoint]) -> list[Task]:
    """All simulations of a run, point by point, policy by policy, seed by seed."""
    return [
        Task(point, i, seed)
        for point in points
        for i in range(len(point.scenario.policies))
        for seed in point.scenario.model.seeds
    ]


def request_rows(task: Task, result: SimResult | TaskOutcome) -> list[dict[str, Any]]:
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


def summary_rows(point: SweepPoint, results: dict[int, list[TaskOutcome]]) -> list[dict[str, Any]]:
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
    profiles = {
        str(loaded.path): loaded.sha256
        for p in points
        for loaded in (p.scenario.profile, *p.scenario.group_profiles)
        if loaded is not None
    }
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
        "versions": package_versions(PACKAGES),
        "platform": platform.platform(),
    }


@dataclass
class TaskOutcome:
    """What a finished task leaves behind: its requests and whole-run figures (the fields
    `fleet_metrics` reads), saved as one JSON part file so a sweep can resume."""

    point: int
    policy_index: int
    seed: int
    records: list[RequestRecord]
    policy_state: dict[str, float]
    cloud_busy_s: float
    cloud_jobs: int
    cloud_batches: int
    edges: int
    plan_throughput_tokens_per_s: float
    timeline: list[Span] | None = None

    @classmethod
    def of(cls, task: Task, result: SimResult) -> TaskOutcome:
        """The outcome of a simulation."""
        return cls(
            point=task.point.index,
            policy_index=task.policy_index,
            seed=task.seed,
            records=result.records,
            policy_state=result.policy_state,
            cloud_busy_s=result.cloud_busy_s,
            cloud_jobs=result.cloud_jobs,
            cloud_batches=result.cloud_batches,
            edges=result.edges,
            plan_throughput_tokens_per_s=result.plan_throughput_tokens_per_s,
            timeline=result.timeline,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain data (the timeline is written separately)."""
        data = asdict(self)
        data.pop("timeline")
        return data

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskOutcome:
        """Read back the JSON text of what `to_json` wrote, checked field by field (strict
        types); ValueError naming the first bad field when it is not such an outcome."""
        try:
            outcome = _OUTCOME.validate_json(text, strict=True)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where + ': ' if where else ''}{first['msg']}") from None
        if outcome.timeline is not None:
            raise ValueError("timeline: not part of a part file")
        return outcome


_OUTCOME = TypeAdapter(TaskOutcome)
"""Checks a part file's data field by field (types strict: a damaged part is refused)."""


def task_id(task: Task) -> str:
    """A file-name-safe identifier of a task."""
    label = task.point.scenario.policies[task.policy_index].label
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return f"p{task.point.index}_{task.policy_index}_{safe}_s{task.seed}"


def execute(job: tuple[Task, bool]) -> TaskOutcome:
    """Run one task (a top-level function, so worker processes and Ray can call it)."""
    task, record_timeline = job
    entry = task.point.scenario.policies[task.policy_index]
    result = simulate(task.point.scenario, entry, task.seed, record_timeline)
    return TaskOutcome.of(task, result)


def fingerprint(points: Sequence[SweepPoint]) -> str:
    """A hash of everything that decides a run's results: points, policies, seeds, profiles."""
    content = [
        {
            "axes": {k: str(v) for k, v in p.axes.items()},
            "raw": p.scenario.raw,
            "profile": p.scenario.profile.sha256,
            "group_profiles": [g.sha256 if g else None for g in p.scenario.group_profiles],
        }
        for p in points
    ]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


class RunFolder:
    """The output folder: part files per finished task, tables rebuilt from them atomically."""

    def __init__(self, out_dir: Path, points: Sequence[SweepPoint]) -> None:
        self.out_dir = out_dir
        self.parts = out_dir / "parts"
        self.points = points
        self.axes = list(points[0].axes)

    def prepare(self, resume: bool, run_fingerprint: str, force: bool = True) -> None:
        """Claim the folder (simulator.outdir: only an empty one or an earlier run's), then
        start afresh (clearing that run's parts) or check that a resumed run matches and that
        every part it kept can be read."""
        claim_out_dir(self.out_dir, RUN_KIND, force=force, resume=resume, resumable=True)
        if resume:
            previous = read_manifest(self.out_dir / MANIFEST)
            if "fingerprint" not in previous:
                problem = "the run there stopped before its first task: start it again with --force"
                raise ConfigError("--resume", "", f"{self.out_dir}: {problem}")
            if previous.get("fingerprint") != run_fingerprint:
                raise ConfigError(
                    "--resume",
                    "",
                    f"{self.out_dir} holds a run of a different scenario, profile or overrides "
                    "(start a new --out)",
                )
            if self.parts.exists() and not self.parts.is_dir():
                raise ConfigError(
                    self.parts, "", "not a folder; cannot resume: start a fresh --out"
                )
        else:
            for folder in (self.parts, self.out_dir / "timelines"):
                if folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
                elif folder.exists() or folder.is_symlink():
                    folder.unlink()
        self.parts.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        """Identifiers of the tasks whose part files exist."""
        return {p.stem for p in self.parts.glob("*.json") if not p.name.startswith(".")}

    def save(self, task: Task, outcome: TaskOutcome) -> None:
        """Write a finished task's part (and timeline) atomically."""
        if outcome.timeline is not None:
            rows = (span._asdict() for span in outcome.timeline)
            name = f"timeline_{task_id(task)}.csv"
            write_table(self.out_dir / "timelines" / name, list(Span._fields), rows)
        write_json(self.parts / f"{task_id(task)}.json", outcome.to_json())

    def load(self, task: Task) -> TaskOutcome:
        """Read a finished task's part; a damaged one is a one-line ConfigError naming it."""
        path = self.parts / f"{task_id(task)}.json"
        try:
            if path.stat().st_size > MAX_PART_BYTES:
                raise ValueError(f"larger than {MAX_PART_BYTES} bytes")
            outcome = TaskOutcome.from_json(path.read_bytes())
        except OSError as exc:
            problem = f"cannot read ({exc.strerror})"
        except ValueError as exc:
            problem = f"damaged ({str(exc).splitlines()[0][:200]})"
        else:
            key = (outcome.point, outcome.policy_index, outcome.seed)
            if key == (task.point.index, task.policy_index, task.seed):
                return outcome
            problem = "damaged (it holds another task's results)"
        raise ConfigError(path, "", f"{problem}; cannot resume from it: start a fresh --out")

    def rebuild(self) -> list[dict[str, Any]]:
        """Rewrite results.csv, edges.csv and summary.csv from the finished points."""
        done = self.done()
        request_table: list[dict[str, Any]] = []
        edge_table: list[dict[str, Any]] = []
        summary: list[dict[str, Any]] = []
        for point in self.points:
            tasks = plan_tasks([point])
            if not all(task_id(t) in done for t in tasks):
                continue
            outcomes: dict[int, list[TaskOutcome]] = {}
            for task in tasks:
                outcome = self.load(task)
                outcomes.setdefault(task.policy_index, []).append(outcome)
                request_table.extend(request_rows(task, outcome))
                edge_table.extend(edge_rows(task, outcome))
            summary.extend(summary_rows(point, outcomes))
        columns = ["point", *self.axes, "policy", "policy_name", "seed"]
        write_table(
            self.out_dir / "results.csv",
            [*columns, *RECORD_FIELDS, "ttft_ms", "tpt_ms"],
            request_table,
        )
        write_table(self.out_dir / "edges.csv", [*columns, *EDGE_COLUMNS], edge_table)
        write_table(self.out_dir / "summary.csv", summary_columns(self.points), summary)
        return summary


EDGE_COLUMNS = ("edge", "requests", "new_tokens", "tpt_ms", "ttft_ms", "tokens_per_s", "navs")


def edge_rows(task: Task, outcome: TaskOutcome) -> list[dict[str, Any]]:
    """One edges.csv row per edge: its requests' tokens, token-weighted TPT, mean TTFT."""
    entry = task.point.scenario.policies[task.policy_index]
    by_edge: dict[int, list[RequestRecord]] = {}
    for record in outcome.records:
        by_edge.setdefault(record.edge, []).append(record)
    rows = []
    for edge, records in sorted(by_edge.items()):
        metrics = summarise(records, 1)
        row: dict[str, Any] = {"point": task.point.index, **task.point.axes}
        row.update(policy=entry.label, policy_name=entry.name, seed=task.seed, edge=edge)
        row.update(
            requests=len(records),
            new_tokens=sum(r.new_tokens for r in records),
            tpt_ms=metrics["tpt_ms"],
            ttft_ms=metrics["ttft_ms"],
            tokens_per_s=metrics["tokens_per_s"],
            navs=sum(r.navs for r in records),
        )
        rows.append(row)
    return rows


def run_scenario(
    scenario_path: Path,
    points: Sequence[SweepPoint],
    out_dir: Path,
    command: Sequence[str] = tuple(sys.argv),
    on_task_done: Callable[[Task], None] | None = None,
    record_timeline: bool = False,
    backend: Backend | None = None,
    resume: bool = False,
    force: bool = True,
) -> list[dict[str, Any]]:
    """Run every task not yet done, saving each as it finishes; returns the summary rows.

    Tables are rebuilt whenever a sweep point completes, so an interrupted run keeps every
    finished point and `resume=True` recomputes only the missing tasks. `out_dir` must be new,
    empty or an earlier run's folder (simulator.outdir; `force=False` refuses the last too).
    """
    folder = RunFolder(out_dir, points)
    run_fingerprint = fingerprint(points)
    folder.prepare(resume, run_fingerprint, force)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tasks = plan_tasks(points)
    done = folder.done()
    if resume:  # every kept part must read back before anything new is written
        for task in tasks:
            if task_id(task) in done:
                folder.load(task)

    def write_manifest(status: str) -> None:
        data = manifest(scenario_path, points, command, status, started)
        data["kind"] = RUN_KIND
        data["fingerprint"] = run_fingerprint
        write_json(out_dir / MANIFEST, data)

    write_manifest("running")
    todo = [t for t in tasks if task_id(t) not in done]
    if on_task_done is not None:
        for task in tasks:
            if task_id(task) in done:
                on_task_done(task)
    remaining = {p.index: sum(1 for t in todo if t.point.index == p.index) for p in points}
    runner = backend or InlineBackend()
    jobs = [(task, record_timeline) for task in todo]
    for (task, _), outcome in runner.map_unordered(execute, jobs):
        folder.save(task, outcome)
        remaining[task.point.index] -= 1
        if remaining[task.point.index] == 0:
            folder.rebuild()
        if on_task_done is not None:
            on_task_done(task)
    rows = folder.rebuild()
    write_manifest("complete")
    return rows
