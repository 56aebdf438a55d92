"""Replaying a real run's recorded compute traces in the simulator (issue 19).

The testbed records, per session, how fast each request's draft steps and verifications ran
against the profile (realrun.edge.speed_probe.request_speed; OUT/real/compute_edge.csv and
compute_cloud.csv, one row per request with its start time in the session). Here those rows
become one `t_s, factor` compute trace per session and side (OUT/sim/compute/, the files the
simulator replayed), and every session is simulated with its own traces: the simulator given
the machine's speed as it moved, as it is given a link's bandwidth as it moved. Where the run
recorded the draft's prefill and its steps apart (runs since the split; they drift apart on
a shared CPU), the edge gets a trace for each; where its timelines keep the upload durations
the edge heard, their spread becomes the uplink's jitter (validation.replay_jitter).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from realrun.testbed import COMPUTE_FILES
from simulator.compute import MAX_SPEED_FACTOR
from simulator.profile import MIN_SPEED_FACTOR
from simulator.results import write_atomic
from simulator.runner import Task, TaskOutcome, execute, summary_rows
from simulator.scenario import SweepPoint
from simulator.scenario_sections import ScenarioModel
from validation.draws import draw_seeds
from validation.replay_jitter import recorded_jitter, write_jitter

Session = tuple[int, str, int]
"""(sweep point, policy label, seed): one testbed session, one simulation per acceptance draw."""


SPLIT_SIDES = {"edge": "decode_factor", "edge_prefill": "prefill_factor"}
"""The edge's traces where the run recorded its prefill and its draft steps apart
(realrun.request_costs.EDGE_SPLIT_COLUMNS): the steps' factor, the prefill's."""

SCENARIO_FIELDS = {
    "edge": ("edge", "compute_trace"),
    "edge_prefill": ("edge", "prefill_compute_trace"),
    "cloud": ("cloud", "compute_trace"),
}
"""Where each side's trace goes in a scenario model: (section, field)."""


def recorded_traces(real: Path) -> dict[Session, dict[str, list[tuple[float, float]]]] | None:
    """Per session and side ("edge", "cloud", and "edge_prefill" where the run recorded the
    draft's prefill apart from its steps), the recorded (t_s, factor) rows in time order; None
    where the run recorded none (runs before issue 19)."""
    if not all((real / name).is_file() for name in COMPUTE_FILES.values()):
        return None
    traces: dict[Session, dict[str, list[tuple[float, float]]]] = {}
    for side, name in COMPUTE_FILES.items():
        with (real / name).open(newline="") as handle:
            reader = csv.DictReader(handle)
            split = side == "edge" and set(SPLIT_SIDES.values()) <= set(reader.fieldnames or ())
            columns = SPLIT_SIDES if split else {side: "factor"}
            for row in reader:
                key = (int(row["point"]), row["policy"], int(row["seed"]))
                for trace, column in columns.items():
                    factor = float(row[column] or "nan")
                    if not math.isfinite(factor) or factor <= 0:
                        continue
                    rows = traces.setdefault(key, {"edge": [], "cloud": []}).setdefault(trace, [])
                    rows.append((float(row["t_s"]), factor))
    for sides in traces.values():
        for rows in sides.values():
            rows.sort()
    return traces


def trace_rows(rows: Sequence[tuple[float, float]]) -> list[dict[str, float]]:
    """A session's recorded (request start, factor) rows as a compute trace: from t = 0 (the
    first request's factor from the session's start), strictly increasing times (a request
    starting at the same time as the one before replaces it), factors within the simulator's
    bounds."""
    trace: list[dict[str, float]] = []
    for t_s, factor in rows:
        factor = min(max(factor, MIN_SPEED_FACTOR), MAX_SPEED_FACTOR)
        t_s = 0.0 if not trace else t_s
        if trace and t_s <= trace[-1]["t_s"]:
            trace[-1]["factor"] = factor
        else:
            trace.append({"t_s": t_s, "factor": factor})
    return trace


def write_traces(
    traces: dict[Session, dict[str, list[tuple[float, float]]]], folder: Path
) -> dict[Session, dict[str, Path]]:
    """Write each session's traces as `t_s, factor` files in `folder`; their paths."""
    paths: dict[Session, dict[str, Path]] = {}
    for (point, policy, seed), sides in sorted(traces.items()):
        for side, rows in sides.items():
            if not rows:
                continue
            path = folder / f"p{point}_{policy}_s{seed}_{side}.csv"
            lines = [f"{row['t_s']!r},{row['factor']!r}\n" for row in trace_rows(rows)]
            write_atomic(path, "t_s,factor\n" + "".join(lines))  # full precision, not 6 digits
            paths.setdefault((point, policy, seed), {})[side] = path.resolve()
    return paths


def simulate_sessions(
    points: Sequence[SweepPoint],
    sessions: dict[Session, Callable[[ScenarioModel], ScenarioModel]],
    draws: int = 1,
) -> dict[tuple[int, str], tuple[int, list[tuple[int, Task, TaskOutcome]]]]:
    """Per (point, policy): the policy's position in the point and the simulations of its
    sessions in `sessions` (session seed, task, outcome), each with its scenario model changed
    by its function, `draws` times (`draw_seeds`)."""
    by_policy: dict[tuple[int, str], list[tuple[int, Callable[[ScenarioModel], ScenarioModel]]]]
    by_policy = {}
    for (index, policy, seed), change in sorted(sessions.items(), key=lambda item: item[0]):
        by_policy.setdefault((index, policy), []).append((seed, change))
    simulated = {}
    for (index, policy), runs in by_policy.items():
        point = points[index]
        scenario = point.scenario
        position = next(i for i, p in enumerate(scenario.policies) if p.label == policy)
        done = []
        for seed, change in runs:
            moved = replace(point, scenario=replace(scenario, model=change(scenario.model)))
            for drawn in draw_seeds(seed, draws):
                task = Task(moved, position, drawn)
                done.append((seed, task, execute((task, False))))
        simulated[(index, policy)] = (position, done)
    return simulated


def resimulate_sessions(
    points: Sequence[SweepPoint],
    sessions: dict[Session, Callable[[ScenarioModel], ScenarioModel]],
    draws: int = 1,
) -> dict[tuple[int, str], float]:
    """TPT (ms) per (point, policy) the simulator predicts when each session of `sessions` runs
    with its scenario model changed by its function (the seeds of a policy not listed do not
    count), each `draws` times (`draw_seeds`), all averaged."""
    predicted = {}
    for (index, policy), (position, done) in simulate_sessions(points, sessions, draws).items():
        outcomes = [outcome for _, _, outcome in done]
        rows = summary_rows(points[index], {position: outcomes})
        predicted[(index, policy)] = float(next(r for r in rows if r["policy"] == policy)["tpt_ms"])
    return predicted


def with_traces(
    paths: dict[str, Path], jitter: Path | None = None
) -> Callable[[ScenarioModel], ScenarioModel]:
    """A scenario-model change: the edge's and the cloud's compute traces, and the edge's
    prefill trace where there is one (`SCENARIO_FIELDS`; not looped: a session past its
    recorded end keeps its last speed); `jitter`: the uplink's jitter samples
    (validation.replay_jitter)."""

    def change(model: ScenarioModel) -> ScenarioModel:
        fields: dict[str, dict[str, Any]] = {}
        for side, path in paths.items():
            section, field = SCENARIO_FIELDS[side]
            fields.setdefault(section, {"compute_trace_repeat": False})[field] = str(path)
        if jitter is not None:
            fields["link"] = {"uplink_jitter": str(jitter)}
        update = {name: getattr(model, name).model_copy(update=f) for name, f in fields.items()}
        return model.model_copy(update=update)

    return change


def resimulate_replayed(
    points: Sequence[SweepPoint], real: Path, sim: Path, draws: int = 1
) -> dict[tuple[int, str], float] | None:
    """TPT (ms) per (point, policy) with every session at its recorded compute traces and,
    where its timeline holds upload reports, their spread as the uplink's jitter (the files
    written to SIM/compute/), `draws` acceptance draws each; None where the real run recorded
    no compute traces."""
    traces = recorded_traces(real)
    if traces is None:
        return None
    paths = write_traces(traces, sim / "compute")
    jitter = write_jitter(recorded_jitter(real), sim / "compute")
    with (real / "results.csv").open(newline="") as handle:
        sessions = {(int(r["point"]), r["policy"], int(r["seed"])) for r in csv.DictReader(handle)}
    # a session without a recorded request (every one offline) runs at the profile's speed
    changes = {key: with_traces(paths.get(key, {}), jitter.get(key)) for key in sessions}
    return resimulate_sessions(points, changes, draws)


__all__ = [
    "recorded_traces",
    "resimulate_replayed",
    "resimulate_sessions",
    "simulate_sessions",
    "trace_rows",
    "with_traces",
    "write_traces",
]
