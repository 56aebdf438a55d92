"""`pipesd validate` for a scenario with `[[edge_groups]]`: the many-edge testbed against the
simulator, per edge and per policy, with three predictions of the same real run.

The real side is `pipesd realrun local`'s fleet (realrun.fleet: one process per edge, one
batching cloud) in OUT/real; it records every edge's timeline and the cloud's speed per
batch against the profile (realrun.fleet_trace). The simulator then predicts each session
(point, policy, seed) three times, each written as a `pipesd run`-like folder:
- OUT/sim: calibration alone (the profile, recalibrated just before with --recalibrate);
- OUT/sim_replayed: the recorded compute traces replayed, every edge as its own `[[edge_groups]]`
  entry with its own draft trace (`edge_costs`) and the cloud with its own
  (OUT/sim_replayed/compute/): on this machine the edges and the server share its cores,
  which the calibration, one model at a time, cannot see; the traces carry it;
- OUT/sim_run_speed: every edge and the cloud at their mean speed over the session (recorded
  predicted over measured time), a constant factor each.
Each is compared with the real run by realrun.fleet_compare (validation.fleet_table writes
the tables). DiP-SD: every prediction executes the plan the testbed ran (batches and draft
lengths from OUT/real/manifest.json, given as the policy's fixed `plan`), not one re-planned for
the speeds it is given; a session whose manifest has none is re-planned, and the table says so.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies.dipsd.policy import FixedPlan
from policies.registry import POLICIES
from realrun.fleet import run_fleet, session_plan
from realrun.fleet_trace import prefill_row
from realrun.local import REALRUN_PACKAGES, LocalOptions
from realrun.testbed import COMPUTE_FILES
from simulator.compute import MAX_SPEED_FACTOR
from simulator.errors import from_validation_error
from simulator.profile import MIN_SPEED_FACTOR
from simulator.provenance import package_versions
from simulator.results import write_json, write_table
from simulator.runner import RECORD_FIELDS, request_rows, summary_columns, summary_rows
from simulator.scenario import SweepPoint
from simulator.scenario_sections import ScenarioModel
from validation.draws import acceptance_draws
from validation.fleet_table import NAMES, FleetTables, fleet_tables, write_fleet_tables
from validation.replay import Session, simulate_sessions, write_traces
from validation.validate import sha256

PREDICTIONS = {
    "calibration": "sim",
    "replayed": "sim_replayed",
    "run_speed": "sim_run_speed",
}
"""Each prediction's folder in OUT (see the module docstring)."""

Change = Callable[[ScenarioModel], ScenarioModel]


def split_point(point: SweepPoint) -> SweepPoint:
    """The point with one `[[edge_groups]]` entry per edge (each a copy of its group with
    count 1: the same edges, in the same order, the same random draws), so each edge can take
    its own compute trace or factor."""
    scenario = point.scenario
    groups, profiles = [], []
    for number, group in enumerate(scenario.model.edge_groups):
        own = scenario.group_profiles[number] if scenario.group_profiles else None
        for _ in range(group.count):
            groups.append(group.model_copy(update={"count": 1}))
            profiles.append(own)
    edge = scenario.model.edge.model_copy(update={"compute_trace_repeat": False})
    model = scenario.model.model_copy(update={"edge_groups": groups, "edge": edge})
    split = replace(scenario, model=model, group_profiles=tuple(profiles))
    return replace(point, scenario=split)


def per_edge(edges: dict[int, dict[str, Any]], cloud: dict[str, Any]) -> Change:
    """A change of a split point's model (`split_point`): edge e's group updated by
    `edges[e]`, the cloud by `cloud` (traces not looped: past its end a trace holds)."""

    def change(model: ScenarioModel) -> ScenarioModel:
        groups = [g.model_copy(update=edges.get(i, {})) for i, g in enumerate(model.edge_groups)]
        section = model.cloud.model_copy(update={"compute_trace_repeat": False, **cloud})
        return model.model_copy(update={"edge_groups": groups, "cloud": section})

    return change


def read_costs(
    real: Path, points: Sequence[SweepPoint]
) -> dict[Session, dict[str, list[dict[str, Any]]]]:
    """Per session, the recorded compute rows by side: "cloud" from every point's
    compute_cloud.csv (one per batch, realrun.fleet_trace) with each request's prefill
    (`prefill_costs`), in time order, and "edge<e>" per edge (`edge_costs`)."""
    costs: dict[Session, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(real.glob(f"points/p*/{COMPUTE_FILES['cloud']}")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                key = (int(row["point"]), row["policy"], int(row["seed"]))
                costs.setdefault(key, {}).setdefault("cloud", []).append(row)
    for key, rows in prefill_costs(real, points).items():
        cloud = costs.setdefault(key, {}).setdefault("cloud", [])
        cloud += rows
        cloud.sort(key=lambda row: float(row["t_s"]))
    for key, edges in edge_costs(real, points).items():
        costs.setdefault(key, {}).update(edges)
    return costs


def prefill_costs(real: Path, points: Sequence[SweepPoint]) -> dict[Session, list[dict[str, Any]]]:
    """Per session, a cloud compute row per request for its prompt prefill
    (realrun.fleet_trace.prefill_row): the cloud's per-batch trace has none, so the simulator
    would serve every prefill at the speed of the batch before it."""
    costs: dict[Session, list[dict[str, Any]]] = {}
    for folder in sorted(real.glob("points/p*/edges/*_s*/e*")):
        index = int(folder.parts[-4][1:])
        label, seed = folder.parts[-2].rsplit("_s", 1)
        target = points[index].scenario.profile.profile.target_latency
        if not (folder / "batches.csv").is_file():  # no NAV shares: the prefill is unknown
            continue
        navs: dict[int, list[dict[str, str]]] = {}
        with (folder / "batches.csv").open(newline="") as handle:
            for nav in csv.DictReader(handle):
                navs.setdefault(int(nav["request"]), []).append(nav)
        sent: dict[int, float] = {}  # each request's first message after its open
        for path in sorted((folder / "timelines").glob("*.csv")):
            with path.open(newline="") as handle:
                for span in csv.DictReader(handle):
                    if span["lane"] in ("cloud", "uplink"):
                        request, start = int(span["request"]), float(span["start_s"])
                        sent[request] = min(sent.get(request, start), start)
        rows = costs.setdefault((index, label, int(seed)), [])
        with (folder / "results.csv").open(newline="") as handle:
            for record in csv.DictReader(handle):
                request = int(record["request"])
                if request not in sent:
                    continue
                row = prefill_row(int(record["prompt_len"]), float(record["cloud_busy_s"]),
                                  navs.get(request, []), sent[request], target)  # fmt: skip
                if row is not None:
                    rows.append(row)
    return costs


def edge_costs(
    real: Path, points: Sequence[SweepPoint]
) -> dict[Session, dict[str, list[dict[str, Any]]]]:
    """Per session and edge ("edge<e>"), two compute rows per request from the edge's timeline:
    its draft prefill (at the start every edge and the server prefill at once, the machine's
    busiest moment) and its draft steps together (as realrun.edge.speed_probe.request_speed
    counts them), each the profile's time over the measured one. compute_edge.csv's `factor`
    lumps both into one per request, which would slow a whole request's steps by its prefill's
    contention."""
    costs: dict[Session, dict[str, list[dict[str, Any]]]] = {}
    for folder in sorted(real.glob("points/p*/edges/*_s*/e*")):
        index, edge = int(folder.parts[-4][1:]), int(folder.name[1:])
        label, seed = folder.parts[-2].rsplit("_s", 1)
        draft = points[index].scenario.profile.profile.draft_latency
        with (folder / "results.csv").open(newline="") as handle:
            prompt = {int(r["request"]): int(r["prompt_len"]) for r in csv.DictReader(handle)}
        spans: dict[int, list[dict[str, str]]] = {}
        for path in sorted((folder / "timelines").glob("*.csv")):
            with path.open(newline="") as handle:
                for span in csv.DictReader(handle):
                    if span["lane"] == "draft":
                        spans.setdefault(int(span["request"]), []).append(span)
        rows = costs.setdefault((index, label, int(seed)), {}).setdefault(f"edge{edge}", [])
        for request, mine in sorted(spans.items()):
            length = prompt[request]
            prefill = [s for s in mine if s["label"] == "prefill"]
            steps = [s for s in mine if s["label"] != "prefill"]
            for part, times in (
                (prefill, [draft.prefill_s(length)] * len(prefill)),
                (steps, [draft.decode_s(length + int(s["first"])) for s in steps]),
            ):
                measured = sum(float(s["end_s"]) - float(s["start_s"]) for s in part)
                if measured > 0:
                    start = float(part[0]["start_s"])
                    cost = {"measured_s": measured, "predicted_s": sum(times)}
                    rows.append({"t_s": start, **cost, "factor": sum(times) / measured})
    return costs


def bounded(factor: float) -> float:
    """A speed factor within the simulator's bounds."""
    return min(max(factor, MIN_SPEED_FACTOR), MAX_SPEED_FACTOR)


def replay_changes(
    costs: dict[Session, dict[str, list[dict[str, Any]]]], folder: Path
) -> dict[Session, Change]:
    """Per session: each edge's and the cloud's recorded trace (written to `folder`)."""
    traces = {
        key: {side: [(float(r["t_s"]), float(r["factor"])) for r in rows
                     if float(r["factor"]) > 0] for side, rows in sides.items()}
        for key, sides in costs.items()
    }  # fmt: skip
    paths = write_traces(traces, folder)
    changes = {}
    for key, sides in paths.items():
        edges = {int(side[4:]): {"compute_trace": str(path)}
                 for side, path in sides.items() if side.startswith("edge")}  # fmt: skip
        cloud = {"compute_trace": str(sides["cloud"])} if "cloud" in sides else {}
        changes[key] = per_edge(edges, cloud)
    return changes


def mean_factor(rows: Sequence[dict[str, Any]]) -> float:
    """Predicted over measured time over rows (a side's mean speed against the profile)."""
    measured = sum(float(r["measured_s"]) for r in rows)
    return bounded(sum(float(r["predicted_s"]) for r in rows) / measured)


def run_speed_changes(
    costs: dict[Session, dict[str, list[dict[str, Any]]]], points: Sequence[SweepPoint]
) -> tuple[dict[Session, Change], dict[str, dict[str, float]]]:
    """Per session: each edge and the cloud at its mean recorded speed; and those factors."""
    changes, factors = {}, {}
    for (index, policy, seed), sides in costs.items():
        base = points[index].scenario.model.edge.compute_factor
        mine = {side: mean_factor(rows) for side, rows in sides.items()}
        edges = {int(side[4:]): {"compute_factor": bounded(base * factor)}
                 for side, factor in mine.items() if side.startswith("edge")}  # fmt: skip
        cloud = {"compute_factor": mine["cloud"]} if "cloud" in mine else {}
        changes[(index, policy, seed)] = per_edge(edges, cloud)
        factors[f"p{index}_{policy}_s{seed}"] = mine
    return changes, factors


def real_sessions(real: Path) -> set[Session]:
    """The sessions the real run has requests of."""
    with (real / "results.csv").open(newline="") as handle:
        return {(int(r["point"]), r["policy"], int(r["seed"])) for r in csv.DictReader(handle)}


def with_plan(point: SweepPoint, label: str, plan: FixedPlan) -> SweepPoint:
    """The point with policy `label` given `plan` as its fixed `plan` parameter, so the
    simulator executes that plan instead of re-planning."""
    scenario = point.scenario
    entries = [
        e.model_copy(update={"params": e.params.model_copy(update={"plan": plan})})
        if e.label == label
        else e
        for e in scenario.policies
    ]
    return replace(point, scenario=replace(scenario, policies=tuple(entries)))


def simulate_into(
    points: Sequence[SweepPoint],
    changes: dict[Session, Change],
    draws: int,
    folder: Path,
    ran: dict[str, FixedPlan] | None = None,
) -> dict[str, dict[str, Any]]:
    """Simulate every session with its change (`draws` acceptance draws each, rows under the
    session's own seed) into `folder`'s results.csv and summary.csv. A DiP-SD session
    executes the plan the testbed ran (`ran`, per `p<point>_<policy>_s<seed>`: run_plans)
    where there is one, else re-plans for the speeds it is given; returns per DiP-SD session
    the plan it used (batches, lengths) and whence ("testbed" or "re-planned")."""
    folder.mkdir(parents=True, exist_ok=True)
    ran = ran or {}
    requests, summary, plans = [], [], {}
    done_by: dict[tuple[int, str], tuple[int, list[Any]]] = {}
    for key, change in sorted(changes.items()):
        index, policy, seed = key
        name = f"p{index}_{policy}_s{seed}"
        mine = list(points)
        if name in ran:
            mine[index] = with_plan(points[index], policy, ran[name])
        for pair, (position, done) in simulate_sessions(mine, {key: change}, draws).items():
            done_by.setdefault(pair, (position, []))[1].extend(done)
            task = done[0][1]
            if name in ran:
                fixed = ran[name]
                plans[name] = {"batches": [list(b) for b in fixed.batches],
                               "lengths": list(fixed.lengths), "source": "testbed"}  # fmt: skip
            elif getattr(POLICIES[points[index].scenario.policies[position].name][1],
                         "uses_fleet_plan", False):  # fmt: skip
                own = session_plan(task.point, task.seed, policy)
                plans[name] = {"batches": own["batches"], "lengths": own["lengths"],
                               "source": "re-planned"}  # fmt: skip
    for (index, policy), (position, done) in done_by.items():
        for seed, task, outcome in done:
            requests += [row | {"seed": seed} for row in request_rows(task, outcome)]
        rows = summary_rows(points[index], {position: [o for _, _, o in done]})
        summary += [row for row in rows if row["policy"] == policy]
    axes = list(points[0].axes)
    columns = ["point", *axes, "policy", "policy_name", "seed", *RECORD_FIELDS, "ttft_ms", "tpt_ms"]
    write_table(folder / "results.csv", columns, requests)
    write_table(folder / "summary.csv", summary_columns(points), summary)
    return plans


def run_plans(real: Path) -> dict[str, FixedPlan]:
    """The DiP-SD plans the testbed ran, per `p<point>_<policy>_s<seed>` (OUT/real's manifest;
    one that is not a plan: one-line ConfigError)."""
    manifest = real / "manifest.json"
    data = json.loads(manifest.read_text())
    sessions = {}
    for index, point in (data.get("testbed", {}).get("points") or {}).items():
        for name, session in (point.get("sessions") or {}).items():
            if "plan" not in session:
                continue
            plan = session["plan"]
            if isinstance(plan, dict):  # the run's planned throughput is not the plan's
                plan = {k: v for k, v in plan.items() if k in ("batches", "lengths")}
            try:
                sessions[f"p{index}_{name}"] = FixedPlan.model_validate(plan)
            except ValidationError as exc:
                where = f"testbed.points.{index}.sessions.{name}.plan"
                raise from_validation_error(manifest, exc, FixedPlan, prefix=where) from None
    return sessions


def same_plan(used: dict[str, Any], ran: FixedPlan | None) -> bool:
    """Whether a prediction's DiP-SD plan has the batches and draft lengths the run had."""
    if ran is None:
        return False
    return used["batches"] == [list(b) for b in ran.batches] and used["lengths"] == list(
        ran.lengths
    )


def plan_notes(plans: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """A line per prediction with DiP-SD sessions: which plan they verified."""
    notes = []
    for name, used in plans.items():
        replanned = sorted(key for key, plan in used.items() if plan["source"] != "testbed")
        if used and not replanned:
            notes.append(f"{NAMES[name]}: DiP-SD verified the plan the testbed ran (its "
                         "manifest's batches and draft lengths)")  # fmt: skip
        elif replanned:
            notes.append(f"{NAMES[name]}: the run's manifest has no DiP-SD plan for "
                         f"{', '.join(replanned)}; the simulator re-planned for the speeds it "
                         "was given (manifest: dipsd_plans)")  # fmt: skip
    return notes


def validate_fleet(
    scenario_path: Path,
    profile_path: Path,
    points: Sequence[SweepPoint],
    options: LocalOptions,
    out_dir: Path,
    command: Sequence[str],
    progress: Callable[[str], None] | None = None,
    origin: dict[str, Any] | None = None,
) -> FleetTables:
    """Run the fleet into OUT/real, the three predictions into their folders, write the
    tables and OUT/manifest.json (with `origin`: the recalibration); returns the tables."""
    run_fleet(scenario_path, points, options, out_dir / "real", command, progress)
    draws = acceptance_draws(options.acceptance)
    return predict_fleet(scenario_path, profile_path, points, draws, out_dir, command, origin)


def predict_fleet(
    scenario_path: Path,
    profile_path: Path,
    points: Sequence[SweepPoint],
    draws: int,
    out_dir: Path,
    command: Sequence[str],
    origin: dict[str, Any] | None = None,
) -> FleetTables:
    """The three predictions of the fleet run in OUT/real (`draws` acceptance draws per
    session), the tables and OUT/manifest.json."""
    real = out_dir / "real"
    split = [split_point(point) for point in points]
    sessions = real_sessions(real)
    costs = read_costs(real, points)
    folders = {name: out_dir / folder for name, folder in PREDICTIONS.items()}
    replayed = replay_changes(costs, folders["replayed"] / "compute")
    at_speed, factors = run_speed_changes(costs, split)
    changes = {
        "calibration": dict.fromkeys(sessions, per_edge({}, {})),
        "replayed": {key: replayed.get(key, per_edge({}, {})) for key in sessions},
        "run_speed": {key: at_speed.get(key, per_edge({}, {})) for key in sessions},
    }
    ran = run_plans(real)
    plans = {name: simulate_into(split, changes[name], draws, folder, ran)
             for name, folder in folders.items()}  # fmt: skip
    as_run = {name: {key: same_plan(plan, ran.get(key)) for key, plan in used.items()}
              for name, used in plans.items()}  # fmt: skip
    tables = fleet_tables(folders, real)
    write_fleet_tables(tables, out_dir, plan_notes(plans))
    write_json(out_dir / "manifest.json", {
        "kind": "validate",
        "fleet": True,
        "command": list(command),
        "scenario": {"path": str(scenario_path.resolve()), "sha256": sha256(scenario_path)},
        "profile": {"path": str(profile_path.resolve()), "sha256": sha256(profile_path)},
        **(origin or {}),
        "seeds": {str(p.index): list(p.scenario.model.seeds) for p in points},
        "versions": package_versions((*REALRUN_PACKAGES, "numpy", "scipy", "simpy")),
        "real": str(real),
        "predictions": {name: str(folder) for name, folder in folders.items()},
        "acceptance_draws": draws,
        "mean_run_speeds": factors,
        "dipsd_plans": plans,
        "dipsd_plan_as_run": as_run,
        "lossless": "not checked in a many-edge run",
        "headline": tables.headline,
        "status": "complete",
    })  # fmt: skip
    return tables


__all__ = ["predict_fleet", "split_point", "validate_fleet"]
